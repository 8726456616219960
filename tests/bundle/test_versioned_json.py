"""The one reader of cxr-assist's versioned JSON files, and the four formats that read through it."""

from __future__ import annotations

import json

import pytest

from cxr_core.bundle.format import BUNDLE_FORMAT, BundleError, read_metadata
from cxr_core.bundle.versioned_json import read_json_object, read_versioned_json
from cxr_core.learn.cache import CACHE_FORMAT, CacheError, open_cache
from cxr_core.learn.pretrain import PRETRAIN_FORMAT, RECORD_FILE, TRUNK_FILE, read_record
from cxr_core.reporting.tour_file import TOUR_FILE, TOUR_FORMAT, read_tour


class OwnError(Exception):
    pass


def _write(path, document):
    path.write_text(document if isinstance(document, str) else json.dumps(document), encoding="utf-8")
    return path


def test_a_file_of_the_format_and_a_version_read_is_returned_whole(tmp_path):
    path = _write(tmp_path / "x.json", {"format": "cxr-assist-x", "format_version": 2, "a": [1]})
    assert read_versioned_json(path, format="cxr-assist-x", versions=range(1, 3)) == {
        "format": "cxr-assist-x", "format_version": 2, "a": [1]}


@pytest.mark.parametrize("document, words", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "a JSON list, not an object"),
    ({"format": "cxr-assist-y", "format_version": 1}, "its format is 'cxr-assist-y', expected 'cxr-assist-x'"),
    ({"format_version": 1}, "its format is None, expected 'cxr-assist-x'"),
    ({"format": "cxr-assist-x", "format_version": 3}, "has cxr-assist-x version 3; this cxr-assist reads versions 1 to 2"),
    ({"format": "cxr-assist-x", "format_version": "2"}, "version '2'"),
    ({"format": "cxr-assist-x"}, "version None"),
])
def test_every_problem_is_the_callers_error_naming_the_file(tmp_path, document, words):
    path = _write(tmp_path / "x.json", document)
    with pytest.raises(OwnError, match="x.json") as caught:
        read_versioned_json(path, format="cxr-assist-x", versions=range(1, 3), error=OwnError)
    assert words in str(caught.value)


def test_a_missing_file_and_the_options(tmp_path):
    with pytest.raises(OwnError, match="no such cxr-assist-x file"):
        read_versioned_json(tmp_path / "none.json", format="cxr-assist-x", versions=(1,), error=OwnError)
    path = _write(tmp_path / "x.json", {"format": "cxr-assist-x", "version": 1})
    assert read_versioned_json(path, format="cxr-assist-x", versions=(1,), version_key="version")["version"] == 1
    path = _write(tmp_path / "old.json", {"format": "cxr-assist-x"})
    assert read_versioned_json(path, format="cxr-assist-x", versions=range(0, 2), missing_version=0) == {"format": "cxr-assist-x"}
    with pytest.raises(ValueError, match="reads version 1$"):
        read_versioned_json(_write(tmp_path / "y.json", {"format": "cxr-assist-x", "format_version": 0}),
                            format="cxr-assist-x", versions=(1,))
    with pytest.raises(ValueError, match="not a metrics file"):
        read_json_object(_write(tmp_path / "z.json", "3"), what="metrics file")


def test_the_four_formats_read_through_it(tmp_path):
    """bundle.json, tour.json, a cache's manifest and pretrain.json: each refuses a newer version in its own error."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    _write(bundle / "bundle.json", {"format": BUNDLE_FORMAT, "format_version": 99})
    with pytest.raises(BundleError, match="version 99; this cxr-assist reads versions 0 to 2"):
        read_metadata(bundle)
    _write(bundle / "bundle.json", {"format": "something else"})
    with pytest.raises(BundleError, match="is not a cxr-assist-bundle file"):
        read_metadata(bundle)
    _write(bundle / TOUR_FILE, {"format": TOUR_FORMAT, "format_version": 2})
    with pytest.raises(ValueError, match="tour.json has cxr-assist-tour version 2"):
        read_tour(bundle)
    _write(bundle / TOUR_FILE, {"format": TOUR_FORMAT, "format_version": 1, "stops": [{"category": "miss"}]})
    with pytest.raises(ValueError, match="has no 'nih_labels' field"):
        read_tour(bundle)
    cache = tmp_path / "cache"
    cache.mkdir()
    _write(cache / "manifest.json", {"format": CACHE_FORMAT, "format_version": 2})
    with pytest.raises(CacheError, match="cxr-assist-cache version 2; this cxr-assist reads version 1"):
        open_cache(cache)
    _write(cache / "manifest.json", "{")
    with pytest.raises(CacheError, match="not valid JSON"):
        open_cache(cache)
    pretrained = tmp_path / "pretrained"
    pretrained.mkdir()
    (pretrained / TRUNK_FILE).write_bytes(b"")
    _write(pretrained / RECORD_FILE, {"format": "cxr-assist-bundle", "version": 1})
    with pytest.raises(ValueError, match="is not a cxr-assist-pretrain file"):
        read_record(pretrained)
    _write(pretrained / RECORD_FILE, {"format": PRETRAIN_FORMAT, "version": 1, "architecture": {}})
    assert read_record(pretrained)["architecture"] == {}
