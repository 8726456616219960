"""A tiny evaluated model bundle for the app tests, built once per test process.

Built by :func:`build_tiny_bundle` (an untrained small_cnn at 64 px over a
patient-wise demo split; ``tests/serving/test_inference.py`` uses it too), or
:func:`build_tiny_ensemble` (two such members at 64 and 48 px), then evaluated with
``evaluate_bundle(bundle, demo_root, n_boot=50)`` so it has thresholds,
calibration, operating points and ``metrics.json`` like a shipped bundle.
The app tests check plumbing, not accuracy.
"""

from __future__ import annotations

import threading
from pathlib import Path

from tests.conftest import REPO_ROOT

SHIPPED_BUNDLE = REPO_ROOT / "models" / "default"
_built: dict[str, Path] = {}
_lock = threading.Lock()


def build_tiny_bundle(directory: Path, demo_root: Path, *, size: int = 64, seed: int = 0, split_seed: int = 0,
                      mean: float = 0.5, logit_scale: float = 1.0) -> Path:
    """Save an untrained small_cnn bundle (64 px by default) over a 40/30/30 patient-wise demo split.

    Args:
        size: input size; seed: weight initialisation; split_seed: the
            split's seed (members of one ensemble share it); mean: the
            preprocessing mean (members may normalise differently);
            logit_scale: multiplies the logits layer's kernel (random logits
            sit near 0, where a mean of logits and a mean of probabilities
            agree; spread them so tests can tell the two apart).
    """
    import keras
    import pandas as pd

    from cxr_core.bundle import Bundle
    from cxr_core.data import NIHDataset, PreprocessConfig, make_split
    from cxr_core.learn import build_model

    keras.utils.set_random_seed(seed)
    dataset = NIHDataset(demo_root)
    splits = make_split(dataset, strategy="patient", fractions=(0.4, 0.3, 0.3), seed=split_seed)
    model = build_model("small_cnn", size, small_cnn_width=8)
    if logit_scale != 1.0:
        kernel, bias = model.get_layer("logits").get_weights()
        model.get_layer("logits").set_weights([kernel * logit_scale, bias])
    bundle = Bundle(
        model=model, input_size=size,
        preprocessing=PreprocessConfig(size=size, mean=mean), backbone="small_cnn",
        model_config={"backbone": "small_cnn", "input_size": size, "weights_init": None},
        split={"strategy": "patient", "seed": split_seed},
        training={"history": {"epochs_run": 0, "seconds": 0.0, "note": f"untrained test member, seed {seed}"}},
        splits=pd.DataFrame({"image": dataset.image_names, "patient_id": dataset.patient_ids, "split": splits}),
    )
    return bundle.save(directory)


#: The tiny ensemble's members: (folder name, input size, weight seed, preprocessing mean, weight).
TINY_MEMBERS = (("a64", 64, 0, 0.5, 0.7), ("b48", 48, 1, 0.45, 0.3))


def build_tiny_ensemble(directory: Path, demo_root: Path) -> Path:
    """Two untrained small_cnn members (64 px and 48 px, weights 0.7 and 0.3) on one split, assembled.

    The members are saved under ``directory / "runs"``; the ensemble is ``directory / "ensemble"``.
    """
    from cxr_core.bundle import assemble_ensemble

    members = [build_tiny_bundle(directory / "runs" / name, demo_root, size=size, seed=seed, mean=mean, logit_scale=40.0)
               for name, size, seed, mean, _ in TINY_MEMBERS]
    return assemble_ensemble(members, directory / "ensemble", weights=[w for *_, w in TINY_MEMBERS],
                             names=[name for name, *_ in TINY_MEMBERS])


def tiny_app_bundle(tmp_path_factory, demo_root: Path) -> Path:
    """The tiny evaluated bundle (one per process, however many test modules ask)."""
    with _lock:
        if "tiny" not in _built:
            from cxr_core.jobs import evaluate_bundle

            path = build_tiny_bundle(tmp_path_factory.mktemp("app_bundle") / "tiny", demo_root)
            evaluate_bundle(path, demo_root, n_boot=50, log=lambda line: None)
            _built["tiny"] = path
        return _built["tiny"]


def tiny_app_ensemble(tmp_path_factory, demo_root: Path) -> Path:
    """The tiny ensemble, evaluated like a shipped bundle (one per process)."""
    with _lock:
        if "ensemble" not in _built:
            from cxr_core.jobs import evaluate_bundle

            path = build_tiny_ensemble(tmp_path_factory.mktemp("app_ensemble"), demo_root)
            evaluate_bundle(path, demo_root, n_boot=50, log=lambda line: None)
            _built["ensemble"] = path
        return _built["ensemble"]


def shipped_bundle_or_skip():
    import pytest

    if not (SHIPPED_BUNDLE / "bundle.json").is_file():
        pytest.skip(f"the shipped model is not in {SHIPPED_BUNDLE} yet (it lands after training)")
    return SHIPPED_BUNDLE


def shipped_with_serving_form():
    """The shipped bundle with its LiteRT serving form built in this test run's cache (once: about 30 s)."""
    bundle = shipped_bundle_or_skip()
    with _lock:
        if "shipped_serving" not in _built:
            from cxr_core.serving.litert import build_serving_form

            build_serving_form(bundle)  # into CXR_ASSIST_SERVING_CACHE, a folder of this test run (conftest.py)
            _built["shipped_serving"] = bundle
    return bundle
