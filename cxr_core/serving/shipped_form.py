"""A member's LiteRT serving form shipped inside its bundle, as a recipe over the member's own weights.

Why it exists: the app runs each member's LiteRT form (:mod:`cxr_core.serving.litert`),
but a machine that has never run cxr-assist had none: the form was converted
once per machine (about 30 s of TensorFlow), so the very first start ran the
Keras models instead, 12.2 s from the home page to the first findings. Shipping
the converted flatbuffers whole would cost about 52 MB in float16 (100 MB in
float32) and store every weight a second time: ``model.keras`` already holds
them, in float16, and LiteRT computes in float32 from exactly those values.

So a bundle ships, beside each member's ``model.keras``, a ``serving/``
folder of a few hundred KB:

* ``skeleton.bin``: the converted flatbuffer's bytes with its kernels cut out
  (the graph, the biases, the small constants);
* ``recipe.json``: where each kernel goes back (its byte offset), which weight
  of ``model.keras`` it is (its axes permuted or reshaped as LiteRT lays them
  out), and, where the converter folded a batch normalisation into a kernel,
  which per-channel float32 scale multiplies it; the SHA-256 of the
  ``model.keras`` it was cut from and of the whole flatbuffer;
* ``scales.npz``: those per-channel scales.

:func:`assemble` puts the flatbuffer together again from the member's own
float16 weights, without TensorFlow (about a tenth of a second per member on
the 2-core machine), and checks that the result is byte for byte the
flatbuffer the converter wrote (its SHA-256): the same numbers as the
evaluated model, to the bit of the converted form. :func:`write_recipe` cuts a
converted flatbuffer into that recipe (``python -m training.export_serving
--ship``) and refuses when a kernel cannot be rebuilt exactly.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["RECIPE_FORMAT", "SHIPPED_DIR", "RecipeError", "Assembled", "has_recipe", "recipe_digest", "assemble",
           "write_recipe"]

#: Version of the recipe's files; another version is not used (the form is converted instead).
RECIPE_FORMAT = 1
#: The folder beside a member's model.keras that holds its shipped form.
SHIPPED_DIR = "serving"
RECIPE_FILE, SKELETON_FILE, SCALES_FILE = "recipe.json", "skeleton.bin", "scales.npz"
#: Keras 3's weights file inside model.keras (a zip, stored uncompressed).
WEIGHTS_ENTRY = "model.weights.h5"
#: Buffers smaller than this stay in the skeleton (biases, folded shifts: a few KB each).
MIN_PATCH_BYTES = 4096
_FLOAT32 = 0  # tflite.TensorType.FLOAT32


class RecipeError(ValueError):
    """A shipped form cannot be used (missing, damaged, for another model.keras) or cannot be written exactly."""


@dataclass(frozen=True)
class Assembled:
    """A member's flatbuffer put together from its recipe, and what its form needs beside it.

    Attributes:
        flatbuffer: the LiteRT model, byte for byte the converter's (``bytes(...)`` for a copy).
        kernel: float32 (d, 14), the logits layer's Dense kernel (for the maps).
        input_size: the square input size in pixels.
        features_shape: ``(h, w, d)`` of the features.
    """

    flatbuffer: memoryview
    kernel: np.ndarray
    input_size: int
    features_shape: tuple[int, int, int]


def has_recipe(member_folder: str | os.PathLike) -> bool:
    """Whether a member's folder ships a serving form (``serving/recipe.json``)."""
    return (Path(member_folder) / SHIPPED_DIR / RECIPE_FILE).is_file()


def recipe_digest(member_folder: str | os.PathLike) -> str | None:
    """The SHA-256 of the ``model.keras`` the shipped form was cut from (None when absent or unreadable)."""
    try:
        return str(json.loads((Path(member_folder) / SHIPPED_DIR / RECIPE_FILE).read_text())["model_sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _weights(model_file: Path, names: set[str]) -> dict[str, np.ndarray]:
    """The named arrays of ``model.keras``'s weights file, as stored (float16 in a float16 bundle)."""
    import h5py

    try:
        with zipfile.ZipFile(model_file) as archive:
            data = archive.read(WEIGHTS_ENTRY)
        with h5py.File(io.BytesIO(data), "r") as weights:
            return {name: np.asarray(weights[name][()]) for name in names}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise RecipeError(f"{model_file}: its weights cannot be read ({type(exc).__name__}: {exc})") from exc


def _all_weights(model_file: Path) -> dict[str, np.ndarray]:
    """Every array of ``model.keras``'s weights file, by its path in the file."""
    import h5py

    with zipfile.ZipFile(model_file) as archive, h5py.File(io.BytesIO(archive.read(WEIGHTS_ENTRY)), "r") as weights:
        names: list[str] = []
        weights.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
        return {name: _as_float32(weights[name]) for name in names}


def _as_float32(dataset) -> np.ndarray:
    """A stored array in float32: read as stored (float16), then cast by numpy (HDF5's own cast is ~20x slower)."""
    return np.asarray(dataset[()]).astype(np.float32)


def _laid_out(weight: np.ndarray, patch: dict) -> np.ndarray:
    """A Keras weight as LiteRT lays it out: axes permuted (``axes``) or reshaped, then scaled per channel."""
    shape = tuple(patch["shape"])
    array = weight.transpose(patch["axes"]) if patch.get("axes") is not None else weight.reshape(shape)
    if array.shape != shape:
        raise RecipeError(f"weight {patch['weight']} has shape {weight.shape}, the recipe needs {shape}")
    return array


def _put(destination: np.ndarray, source: np.ndarray, scale: np.ndarray | None, axis: int | None) -> None:
    """Write ``source`` (a stored weight, laid out) into ``destination`` (float32), times ``scale`` along ``axis``.

    One pass, no temporary: a float16 value widens to float32 exactly, and float32 times float32 is the converter's
    product, rounded the same.
    """
    if scale is None:
        np.copyto(destination, source, casting="same_kind")
        return
    shape = [1] * source.ndim
    shape[axis] = -1
    np.multiply(source, scale.reshape(shape), out=destination, dtype=np.float32)


def assemble(member_folder: str | os.PathLike, model_file: str | os.PathLike) -> Assembled:
    """Put a member's shipped flatbuffer together from its recipe and its ``model.keras`` (no TensorFlow).

    Args:
        member_folder: the member's folder (with ``serving/``).
        model_file: its ``model.keras``, the one the recipe was cut from
            (the caller compares :func:`recipe_digest` with its SHA-256 first).

    Raises:
        RecipeError: a file is missing or damaged, or the result is not the converter's flatbuffer.
    """
    return _assemble_from(Path(member_folder) / SHIPPED_DIR, Path(model_file))


def _assemble_from(folder: Path, model_file: Path) -> Assembled:
    try:
        recipe = json.loads((folder / RECIPE_FILE).read_text())
        skeleton = (folder / SKELETON_FILE).read_bytes()
        with np.load(folder / SCALES_FILE) as stored:
            scales = {key: np.asarray(stored[key], dtype=np.float32) for key in stored.files}
        if recipe["format"] != RECIPE_FORMAT:
            raise RecipeError(f"{folder}: recipe format {recipe['format']}, this version reads {RECIPE_FORMAT}")
        patches = sorted(recipe["patches"], key=lambda patch: patch["offset"])
        size, head = int(recipe["tflite_size"]), str(recipe["head"])
        expected = size - sum(4 * int(np.prod(patch["shape"])) for patch in patches)
        if len(skeleton) != expected:
            raise RecipeError(f"the shipped serving form in {folder} is damaged ({SKELETON_FILE} has {len(skeleton)} "
                              f"bytes, the recipe needs {expected})")
    except RecipeError:
        raise
    except Exception as exc:  # noqa: BLE001 - a truncated npz, odd JSON, a missing key: all "damaged"
        raise RecipeError(f"the shipped serving form in {folder} is damaged ({type(exc).__name__}: {exc})") from exc
    weights = _weights(model_file, {patch["weight"] for patch in patches} | {head})
    out = np.empty(size, dtype=np.uint8)
    rest = np.frombuffer(skeleton, dtype=np.uint8)
    written = taken = 0  # bytes of out filled, bytes of the skeleton used
    try:
        for patch in patches:
            gap = patch["offset"] - written
            out[written:patch["offset"]] = rest[taken:taken + gap]
            taken += gap
            source = _laid_out(weights[patch["weight"]], patch)
            written = patch["offset"] + 4 * source.size
            scaled = patch.get("scale") is not None
            _put(out[patch["offset"]:written].view("<f4").reshape(source.shape), source,
                 scales[patch["scale"]] if scaled else None, int(patch["scale_axis"]) if scaled else None)
        out[written:] = rest[taken:]
    except (KeyError, ValueError, TypeError) as exc:  # a shape or a length that does not fit
        raise RecipeError(f"the shipped serving form in {folder} does not fit {model_file} ({exc})") from exc
    if hashlib.sha256(out).hexdigest() != recipe["tflite_sha256"]:
        raise RecipeError(f"the flatbuffer assembled from {folder} is not the converted one (SHA-256 differs)")
    return Assembled(flatbuffer=out.data, kernel=weights[head].astype(np.float32), input_size=int(recipe["input_size"]),
                     features_shape=tuple(int(v) for v in recipe["features_shape"]))


def _buffer_patches(flatbuffer: bytes) -> list[dict]:
    """``{offset, shape, array}`` of every float32 constant of at least two axes and MIN_PATCH_BYTES bytes."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    found = {}
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for t in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(t)
            buffer = model.Buffers(tensor.Buffer())
            if tensor.Type() != _FLOAT32 or buffer.DataLength() < MIN_PATCH_BYTES or tensor.ShapeLength() < 2:
                continue
            start = buffer._tab.Vector(buffer._tab.Offset(4))  # the data vector's first byte in the file
            shape = tuple(int(v) for v in tensor.ShapeAsNumpy())
            array = np.frombuffer(flatbuffer, dtype="<f4", count=buffer.DataLength() // 4, offset=start)
            if array.size != int(np.prod(shape)):
                continue
            found[start] = {"offset": start, "shape": list(shape), "array": array.reshape(shape)}
    return [found[k] for k in sorted(found)]


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal bit for bit (``-0.0`` is not ``0.0`` here: the assembled bytes must be the converter's)."""
    return a.shape == b.shape and np.array_equal(np.ascontiguousarray(a, dtype="<f4").view("<u4"),
                                                 np.ascontiguousarray(b, dtype="<f4").view("<u4"))


def _exact_scale(kernel: np.ndarray, target: np.ndarray) -> np.float32 | None:
    """The float32 ``s`` with ``kernel * s == target`` bit for bit (one channel), or None."""
    nonzero = np.flatnonzero(kernel)
    if nonzero.size == 0:  # a dead channel: only the signs of its zeros depend on the scale's sign
        return next((s for s in (np.float32(1.0), np.float32(-1.0)) if _same_bits(kernel * s, target)), None)
    for j in nonzero[:6]:
        guess = np.float32(np.float64(target[j]) / np.float64(kernel[j]))
        for step in (0, 1, -1, 2, -2):
            scale = guess
            for _ in range(abs(step)):
                scale = np.nextafter(scale, np.float32(np.inf if step > 0 else -np.inf), dtype=np.float32)
            if _same_bits(kernel * scale, target):
                return scale
    return None


def _match(target: np.ndarray, weight: np.ndarray) -> dict | None:
    """How ``weight`` becomes ``target`` exactly: ``{axes}`` or ``{axes: None}`` (reshape), with a scale or not."""
    if weight.ndim == target.ndim:
        layouts = [(list(p), weight.transpose(p)) for p in itertools.permutations(range(weight.ndim))
                   if weight.transpose(p).shape == target.shape]
    else:
        layouts = [(None, weight.reshape(target.shape))]
    for axes, array in layouts:
        if _same_bits(array, target):
            return {"axes": axes, "scale_axis": None, "scale": None}
        for axis in range(target.ndim):
            channels = np.moveaxis(target, axis, 0).reshape(target.shape[axis], -1)
            sources = np.moveaxis(array, axis, 0).reshape(target.shape[axis], -1)
            scale = []
            for source, channel in zip(sources, channels):
                s = _exact_scale(source, channel)
                if s is None:
                    break
                scale.append(s)
            if len(scale) == target.shape[axis]:
                return {"axes": axes, "scale_axis": axis, "scale": np.array(scale, dtype=np.float32)}
    return None


def write_recipe(flatbuffer: bytes, kernel: np.ndarray, model_file: str | os.PathLike, member_folder: str | os.PathLike,
                 *, input_size: int, features_shape, model_sha256: str, progress=None) -> dict:
    """Cut a member's converted flatbuffer into its shipped recipe (``<member_folder>/serving/``, replaced whole).

    Args:
        flatbuffer: the member's converted LiteRT model (:func:`cxr_core.serving.litert.export_member`).
        kernel: its logits layer's Dense kernel, float32.
        model_file: the ``model.keras`` it was converted from.
        member_folder: where ``serving/`` is written.
        input_size, features_shape: as the form records them.
        model_sha256: the SHA-256 of ``model_file``.
        progress: receives a line about each kernel left in the skeleton.

    Returns:
        ``{"skeleton_bytes", "patched_bytes", "kept_bytes"}``.

    Raises:
        RecipeError: the logits kernel is not one of the weights, or the recipe does not rebuild the flatbuffer.
    """
    model_file = Path(model_file)
    weights = _all_weights(model_file)
    by_size: dict[int, list[str]] = {}
    for name, array in weights.items():
        by_size.setdefault(array.size, []).append(name)
    head = next((name for name in by_size.get(kernel.size, []) if weights[name].shape == kernel.shape
                 and np.array_equal(weights[name], kernel)), None)
    if head is None:
        raise RecipeError(f"{model_file}: the logits kernel is not among its stored weights")
    patches, scales, skeleton, kept, cursor = [], {}, bytearray(), 0, 0
    for found in _buffer_patches(flatbuffer):
        how = next(((name, m) for name in by_size.get(found["array"].size, [])
                    if (m := _match(found["array"], weights[name])) is not None), None)
        if how is None:
            kept += found["array"].nbytes
            if progress:
                progress(f"  a {tuple(found['shape'])} constant matches no stored weight: kept in the skeleton")
            continue
        name, match = how
        patch = {"offset": found["offset"], "shape": found["shape"], "weight": name, "axes": match["axes"],
                 "scale_axis": match["scale_axis"], "scale": None}
        if match["scale"] is not None:
            patch["scale"] = f"p{len(patches)}"
            scales[patch["scale"]] = match["scale"]
        skeleton += flatbuffer[cursor:found["offset"]]
        cursor = found["offset"] + found["array"].nbytes
        patches.append(patch)
    skeleton += flatbuffer[cursor:]
    recipe = {
        "format": RECIPE_FORMAT, "model_sha256": model_sha256, "weights_entry": WEIGHTS_ENTRY,
        "tflite_sha256": hashlib.sha256(flatbuffer).hexdigest(), "tflite_size": len(flatbuffer),
        "input_size": int(input_size), "features_shape": [int(v) for v in features_shape], "head": head,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "patches": patches,
    }
    # Written beside, checked, then put in place: a recipe that does not rebuild the bytes is never shipped, and an
    # interrupted write leaves the previous recipe whole.
    folder = Path(member_folder) / SHIPPED_DIR
    scratch = Path(member_folder) / f".{SHIPPED_DIR}-writing"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        (scratch / SKELETON_FILE).write_bytes(bytes(skeleton))
        buffer = io.BytesIO()
        np.savez(buffer, **scales)
        (scratch / SCALES_FILE).write_bytes(buffer.getvalue())
        (scratch / RECIPE_FILE).write_text(json.dumps(recipe, indent=1) + "\n")
        check = _assemble_from(scratch, model_file)
        if bytes(check.flatbuffer) != flatbuffer or not np.array_equal(check.kernel, kernel):
            raise RecipeError(f"{folder}: the recipe does not rebuild the converted flatbuffer")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(scratch, folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"skeleton_bytes": len(skeleton), "patched_bytes": len(flatbuffer) - len(skeleton) - kept,
            "kept_bytes": kept}
