"""The DICOM node takes an adapted bundle: a film routed by a real PACS (Debian's Orthanc) comes back as an SR that
names the adapted bundle and carries its calibrated numbers.

The adapted bundle is written by a tiny adaptation (the app tests' untrained small_cnn bundle, refitted on 40 real
NIH test films with NIH's labels, the default ``--recalibrate auto --triage auto``: the untrained model's calibration
is far off on real films, the fit part supports moving it, and the bundle is written); the film is the real film of tests/dicom_sources.py with synthetic UIDs (tests/pacs_harness.py).
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from tests.adaptation.test_adapt import _make_site, _nih_films, _quiet
from tests.app_bundle import tiny_app_bundle
from tests.pacs.test_pacs_node import _needs, _wait_results
from tests.pacs_harness import NodeProcess, Orthanc, chest_films, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def adapted(tmp_path_factory, demo_root, shared_nih):
    from cxr_core.adaptation import adapt_bundle

    tiny = tiny_app_bundle(tmp_path_factory, demo_root)
    root = tmp_path_factory.mktemp("adapted")
    site_dir, labels = _make_site(root / "site", shared_nih, _nih_films(shared_nih, "test", 40))
    report = adapt_bundle(tiny, site_dir, labels, root / "out", min_positives=2, n_boot=50, site_name="Ward 7",
                          log=_quiet)
    assert report["decision"] == "written", report["reason"]
    return tiny, root / "out" / "bundle"


def test_the_node_serves_an_adapted_bundle_and_its_sr_names_it(adapted, tmp_path):
    from cxr_core.findings import FINDINGS
    from cxr_core.jobs import predict_files
    from cxr_core.pacs import bundle_fingerprint
    from cxr_core.pacs.results import read_sr
    from cxr_core.serving import Predictor

    _needs("Orthanc", "storescu")
    parent, bundle = adapted
    assert bundle_fingerprint(bundle) != bundle_fingerprint(parent)
    node_port = free_port()
    with Orthanc(tmp_path / "orthanc", node=("CXR_ASSIST", node_port)) as orthanc:
        node = NodeProcess(tmp_path / "inbox", send_to=f"ORTHANC@127.0.0.1:{orthanc.dicom_port}", port=node_port,
                           extra=["--bundle", str(bundle)])
        try:
            node.start()
            [film] = chest_films(tmp_path / "films", 1, cases=["chest8-explicit-le"], seed="adapted")
            assert orthanc.store_files([film]) == [0]
            uid = str(pydicom.dcmread(film, stop_before_pixels=True).SOPInstanceUID)
            [sr] = _wait_results(orthanc, [uid])[uid]["sr"]
        finally:
            node.stop()
    summary = read_sr(sr["dataset"])
    assert summary.bundle_digest == bundle_fingerprint(bundle)
    expected = predict_files(Predictor.from_bundle(bundle), [str(film)]).iloc[0]
    assert summary.triage == expected["triage"] != "not assessed"
    # The adapted calibration's numbers, not the parent's.
    np.testing.assert_allclose([summary.probabilities[f] for f in FINDINGS], [expected[f] for f in FINDINGS], atol=1e-4)
    parent_row = predict_files(Predictor.from_bundle(parent), [str(film)]).iloc[0]
    assert not np.allclose([expected[f] for f in FINDINGS], [parent_row[f] for f in FINDINGS], atol=1e-4)
