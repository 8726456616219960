"""tools/check_licences.py: GPL and AGPL refused, odd spellings read without false alarms, the allow-list."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools import check_licences as cl
from tools.check_licences import OK, REFUSED, REVIEW, Entry, judge


def _entry(**fields) -> Entry:
    return Entry(name=fields.pop("name", "somepkg"), version="1.0", **fields)


@pytest.mark.parametrize(
    "fields",
    [
        {"expression": "GPL-3.0-only"},
        {"expression": "GPL-2.0-or-later"},
        {"expression": "AGPL-3.0"},
        {"expression": "MIT AND GPL-3.0-or-later"},
        {"classifiers": ("OSI Approved :: GNU General Public License v3 (GPLv3)",)},
        {"classifiers": ("OSI Approved :: GNU Affero General Public License v3",)},
        # pylibjpeg-libjpeg 2.5.0 as installed before issue 23
        {"classifiers": ("OSI Approved :: GNU General Public License v3 (GPLv3)", "Other/Proprietary License"),
         "field": "GPL V3.0"},
        {"field": "GPL V3.0"},
        {"field": "GNU General Public License v2"},
        {"field": "GPLv3"},
    ],
)
def test_gpl_and_agpl_are_refused(fields: dict) -> None:
    verdict = judge(_entry(**fields))
    assert verdict.verdict == REFUSED and not verdict.passes


def test_allow_list_cannot_pass_a_gpl_package() -> None:
    allow = {"somepkg": ("MIT", "someone says so", "")}
    assert not judge(_entry(expression="GPL-3.0-only"), allow).passes


@pytest.mark.parametrize(
    "fields",
    [
        {"expression": "MIT"},
        {"expression": "Apache-2.0 OR BSD-2-Clause"},  # packaging
        {"expression": "BSD-3-Clause AND 0BSD AND MIT AND Zlib AND CC0-1.0"},  # numpy
        {"expression": "MIT OR GPL-2.0-or-later"},  # dual: MIT may be chosen
        {"expression": "(MIT OR GPL-3.0) AND BSD-3-Clause"},
        {"expression": "BSD-3-Clause AND GPL-3.0-or-later WITH GCC-exception-3.1"},  # a bundled libgfortran
        {"expression": "MPL-2.0 AND MIT"},
        {"expression": "LicenseRef-MIT"},
        {"field": "MPL-2.0 AND MIT"},  # tqdm: an SPDX expression in the License field
        {"field": "3-Clause BSD License"},  # protobuf
        {"field": "BSD license (see license.txt for details), Copyright (c) 2000-2025, ReportLab Inc."},
        {"field": "Apache 2.0"},
        {"classifiers": ("OSI Approved :: BSD License", "OSI Approved :: Apache Software License"), "field": "Dual License"},
        {"classifiers": ("OSI Approved :: Mozilla Public License 2.0 (MPL 2.0)",)},
        # scipy: the whole licence text in License, mentioning the GPL of a bundled runtime and its exception
        {"classifiers": ("OSI Approved :: BSD License",),
         "field": "Copyright (c) 2001-2002 Enthought, Inc.\nAll rights reserved.\n...\nName: GCC runtime library\n"
                  "License: GPL-3.0-with-GCC-exception\n GNU GENERAL PUBLIC LICENSE Version 3"},
    ],
)
def test_permissive_spellings_pass(fields: dict) -> None:
    verdict = judge(_entry(**fields))
    assert verdict.verdict == OK and verdict.passes, verdict


@pytest.mark.parametrize(
    "fields",
    [
        {"expression": "LGPL-2.1-or-later"},  # LGPL is decided package by package, not passed blindly
        {"classifiers": ("OSI Approved :: GNU Lesser General Public License v3 (LGPLv3)",)},
        {"field": "LGPL"},
        {"classifiers": ("OSI Approved :: MIT License", "OSI Approved :: GNU General Public License v2 (GPLv2)")},
        {"classifiers": ("OSI Approved :: MIT License",), "field": "GPL-3.0"},  # the fields disagree
        {"field": "UNKNOWN"},
        {"field": ""},
        {"classifiers": ("Other/Proprietary License",)},
        {"expression": "SSPL-1.0"},
    ],
)
def test_unclear_licences_need_a_decision(fields: dict) -> None:
    verdict = judge(_entry(**fields))
    assert verdict.verdict == REVIEW and not verdict.passes, verdict
    assert "ALLOW" in verdict.note


def test_the_allow_list_decides_with_a_reason_and_checks_the_licence_file() -> None:
    allow = {"somepkg": ("Apache-2.0", "the wheel's LICENSE is Apache-2.0", "Apache License, Version 2.0")}
    ok = judge(_entry(field="UNKNOWN", licence_text="Licensed under the Apache License, Version 2.0"), allow)
    assert ok.passes and ok.source == "allow-list" and ok.note == "the wheel's LICENSE is Apache-2.0"
    changed = judge(_entry(field="UNKNOWN", licence_text="GNU GENERAL PUBLIC LICENSE"), allow)
    assert not changed.passes and "does not say" in changed.note


def test_every_allow_list_entry_gives_a_reason() -> None:
    for name, (licence, reason, _) in cl.ALLOW.items():
        assert licence and len(reason) > 20, name


def _fake_distribution(site: Path, name: str, **headers: str) -> None:
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.4", f"Name: {name}", "Version: 1.0"]
    lines += [f"{key.replace('_', '-')}: {value}" for key, value in headers.items()]
    (info / "METADATA").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_a_gpl_dependency_fails_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """End to end: a requirement file naming an installed GPL package (fake, with a clean MIT one that requires it)."""
    site = tmp_path / "site"
    _fake_distribution(site, "fake_clean_tool", License_Expression="MIT", Requires_Dist="fake-gpl-codec>=1")
    _fake_distribution(site, "fake_gpl_codec", License="GPL V3.0",
                       Classifier="License :: OSI Approved :: GNU General Public License v3 (GPLv3)")
    monkeypatch.syspath_prepend(str(site))
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# a comment\nfake-clean-tool==1.0  # trailing comment\n", encoding="utf-8")
    assert cl.main(["-r", str(requirements)]) == 1
    out = capsys.readouterr().out
    assert "FAIL fake-gpl-codec 1.0: refused" in out  # found through the clean package's requirement
    assert "licence check: FAILED" in out
    requirements.write_text("fake-clean-tool==1.0\nnot-installed-anywhere>=1\n", encoding="utf-8")
    (site / "fake_gpl_codec-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.4\nName: fake_gpl_codec\nVersion: 1.0\nLicense-Expression: BSD-3-Clause\n", encoding="utf-8"
    )
    assert cl.main(["-r", str(requirements)]) == 1
    assert "FAIL not-installed-anywhere: required but not installed" in capsys.readouterr().out


def test_requirements_txt_passes_here(capsys) -> None:
    """What .ci/run checks: everything requirements.txt installs, as installed here, passes."""
    assert cl.main([]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "imagecodecs" in out and "pylibjpeg-libjpeg" not in out
