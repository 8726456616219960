"""Sharded batch prediction (issue 12, item 3): --shard K/N, --merge, streamed rows, images/s.

A fake predictor (no model, no decoding) stands in where only the plumbing is
under test: the 100k-row memory check and the merge's refusals. The command
runs once for real, on a tiny ensemble (members at 64 and 48 px).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from cxr_core.errors import ImageReadError
from cxr_core.evaluation.reading import ReadingPolicy
from cxr_core.findings import FINDINGS
from cxr_core.jobs import Listing, ShardMergeError, merge_shards, parse_shard, predict_to_csv, run_record_path, stable_listing
from cxr_core.serving.predictor import Inputs
from tests.app_bundle import build_tiny_ensemble
from tests.conftest import REPO_ROOT


class FakePredictor:
    """Scores from the file name (a stable hash), no decoding; names containing "bad" are unreadable."""

    policy = ReadingPolicy.from_metadata({})

    def prepare(self, path, *, keep_image=True):
        name = str(path).rsplit("/", 1)[-1]
        if "bad" in name:
            raise ImageReadError(f"{name} is not an image", reason="not_an_image")
        return Inputs(resized={4: np.full((4, 4), sum(name.encode()) % 251, np.uint8)})

    def analyze(self, films, *, explain=None):
        x = np.array([film.resized[4][0, 0] for film in films], float)[:, None] / 251.0
        p = (x + np.arange(len(FINDINGS)) / 100.0) % 1.0
        return [SimpleNamespace(probabilities=dict(zip(FINDINGS, row.tolist())), warnings=(), withheld_because=())
                for row in p]


def _names(n: int) -> list[str]:
    return [f"{i:08d}_000.png" if i % 997 else f"{i:08d}_bad.png" for i in range(n)]


def _run_shards(tmp_path, listing: Listing, n: int) -> list:
    outs = []
    for k in range(n):
        out = tmp_path / f"shard{k}.csv"
        predict_to_csv(FakePredictor(), listing.shard(k, n), out, shard=(k, n), listing=listing, batch_size=7)
        outs.append(out)
    return outs


def test_parse_shard():
    assert parse_shard("0/4") == (0, 4) and parse_shard(" 3 / 4 ") == (3, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="K/N"):
            parse_shard(bad)


def test_stable_listing_is_sorted_by_relative_path_and_shards_partition_it(tmp_path):
    for folder, names in (("images_002/images", ["b.png", "a.png"]), ("images_001/images", ["c.png"])):
        (tmp_path / folder).mkdir(parents=True)
        for name in names:
            (tmp_path / folder / name).write_bytes(b"x")
    listing = stable_listing(tmp_path)
    assert [p.rsplit("/", 1)[-1] for p in listing.files] == ["c.png", "a.png", "b.png"]
    assert stable_listing(tmp_path).fingerprint == listing.fingerprint
    names = Listing(_names(10), source="x")
    shards = [names.shard(k, 3) for k in range(3)]
    assert shards[1] == names.files[1::3] and sorted(sum(shards, [])) == sorted(names.files)


_RSS_PROBE = """
import json, os, sys
from tests.jobs.test_batch_shards import FakePredictor, _names
from cxr_core.jobs import predict_to_csv

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

files = _names(100_000)
predict_to_csv(FakePredictor(), files[:3_000], sys.argv[1] + ".warm", batch_size=128)  # first-use allocations
samples = []

def probe(rows):
    for i, row in enumerate(rows):
        if i % 5_000 == 0:
            samples.append(rss())
        yield row

record = predict_to_csv(FakePredictor(), files, sys.argv[1], batch_size=128, progress=probe)
samples.append(rss())
print(json.dumps({"samples": samples, "record": record}))
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the resident set size from /proc")
def test_memory_stays_flat_over_100k_rows(tmp_path):
    """Streaming, measured: the resident set size of a 100k-row run does not grow with the rows written.

    Holding the rows (a DataFrame, or the row dicts) would add well over 50 MB;
    the probe runs in its own process so the test session's memory does not blur it.
    """
    out = tmp_path / "p.csv"
    result = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(out)], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    samples, record = probe["samples"], probe["record"]
    assert record["rows"] == 100_000 and record["complete"] and record["images_per_s"] > 0
    growth = max(samples) - samples[1]  # after the first 5k rows
    assert growth < 8_000_000, f"RSS grew by {growth / 1e6:.1f} MB over 100k rows: {samples}"
    table = pd.read_csv(out, keep_default_na=False)
    assert len(table) == 100_000 and table["Image Index"].iloc[-1] == "00099999_000.png"
    errors = pd.read_csv(tmp_path / "p.errors.csv")
    assert len(errors) == sum("bad" in f for f in _names(100_000))


def test_shards_merge_into_the_unsharded_run(tmp_path):
    listing = Listing(_names(2_500), source="images")
    whole = tmp_path / "whole.csv"
    predict_to_csv(FakePredictor(), listing.files, whole, listing=listing)
    outs = _run_shards(tmp_path, listing, 3)
    record = json.loads(run_record_path(outs[1]).read_text())
    assert (record["shard"], record["of"], record["rows"]) == (1, 3, len(range(1, 2500, 3)))
    assert record["listing"] == {"total": 2500, "sha256": listing.fingerprint, "source": "images"}
    merged = tmp_path / "all.csv"
    result = merge_shards(list(reversed(outs)), merged)
    assert result["images"] == 2500 and len(result["shards"]) == 3
    assert merged.read_text() == whole.read_text()
    assert (tmp_path / "all.errors.csv").read_text() == (tmp_path / "whole.errors.csv").read_text()


def test_merge_refuses_incomplete_sets_naming_what_is_wrong(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in _names(20):
        (folder / name).write_bytes(b"x")
    listing = stable_listing(folder)
    outs = _run_shards(tmp_path, listing, 4)

    with pytest.raises(ShardMergeError, match=r"shard 2/4 is missing: its 5 images are in no output: 00000002_000.png, "
                                              r"00000006_000.png"):
        merge_shards([outs[0], outs[1], outs[3]], tmp_path / "m.csv", images=folder)
    with pytest.raises(ShardMergeError, match=r"shard 1/4 given 2 times"):
        merge_shards([*outs, outs[1]], tmp_path / "m.csv")

    other = Listing(listing.files[:-1], source="images")
    foreign = tmp_path / "foreign.csv"
    predict_to_csv(FakePredictor(), other.shard(3, 4), foreign, shard=(3, 4), listing=other)
    with pytest.raises(ShardMergeError, match="different runs"):
        merge_shards([*outs[:3], foreign], tmp_path / "m.csv")

    # An edited shard: one image replaced by another one's row.
    lines = outs[0].read_text().splitlines()
    lines[2] = lines[2].replace("00000004_000.png", "00000001_000.png")
    outs[0].write_text("\n".join(lines) + "\n")
    with pytest.raises(ShardMergeError, match=r"00000001_000.png.*missing: 00000004_000.png"):
        merge_shards(outs, tmp_path / "m.csv", images=folder)
    assert not list(tmp_path.glob("m.*")), "nothing is written when the merge refuses"

    # A shard whose run stopped part-way.
    record = json.loads(run_record_path(outs[3]).read_text())
    run_record_path(outs[3]).write_text(json.dumps({**record, "complete": False}))
    with pytest.raises(ShardMergeError, match=r"shard 3/4\) is incomplete"):
        merge_shards(outs, tmp_path / "m.csv")


def test_predict_command_shards_and_merges_an_ensemble(tmp_path, demo_root, capsys):
    from training.predict import main

    bundle = build_tiny_ensemble(tmp_path / "ens", demo_root)
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted((demo_root / "images").glob("*.png"))[:7]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.png").write_bytes(b"not a png")
    common = ["--bundle", str(bundle), "--images", str(folder), "--batch-size", "2"]
    assert main([*common, "--out", str(tmp_path / "whole.csv")]) == 0
    for k in range(3):
        assert main([*common, "--out", str(tmp_path / f"s{k}.csv"), "--shard", f"{k}/3"]) == 0
        assert f"shard {k}/3: " in capsys.readouterr().err
    assert main(["--merge", *(str(tmp_path / f"s{k}.csv") for k in (2, 0)), "--out", str(tmp_path / "all.csv")]) == 2
    assert "shard 1/3 is missing" in capsys.readouterr().err
    assert main(["--merge", *(str(tmp_path / f"s{k}.csv") for k in (2, 0, 1)), "--out", str(tmp_path / "all.csv")]) == 0
    # Empty cells read as NaN, so the probabilities are numbers (text columns still compare exactly).
    merged, whole = pd.read_csv(tmp_path / "all.csv"), pd.read_csv(tmp_path / "whole.csv")
    # A flat folder: the unsharded order is the sorted one too. Probabilities may differ in the
    # 6th decimal written: a shard batches other images together (2 + 1 instead of 2 + 2), and
    # the CPU kernels' float sums depend on the batch, so a value near a rounding edge can flip.
    pd.testing.assert_frame_equal(merged, whole, check_exact=False, rtol=0, atol=2e-6)
    assert merged.loc[merged["Image Index"] == "broken.png", "error"].item()
    assert pd.read_csv(tmp_path / "all.errors.csv")["Image Index"].tolist() == ["broken.png"]
    assert json.loads((tmp_path / "all.run.json").read_text())["images"] == 8
