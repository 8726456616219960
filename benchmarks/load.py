"""Many users on one app: simultaneous browser sessions uploading on Analyze and reading a reader study.

    python -m benchmarks.load [--sessions 8] [--seconds 120] [--bundle models/default]
                              [--images ../shared/nih/images] [--out benchmarks/LOAD_RESULTS.md]

Starts ``streamlit run app.py`` headless on a free 127.0.0.1 port with a
reader-study database in a temporary folder (never the user's
``var/reader_study.sqlite3``), creates a study of demo cases in it, and drives
``--sessions`` browser sessions at once (one chromium, one Playwright context
per session, asyncio) for ``--seconds``. Each session loops, with no pause
between actions unless ``--think`` is given (the stress test: every session
acts back to back). With ``--think T`` each pause is drawn uniform in
[0.5, 1.5] x T and each session waits a random 0-T before its first upload,
as people do; the same T for all in lockstep would make the sessions upload
in the same second, round after round:

1. **upload**: on the Analyze page, ``set_input_files`` of a real NIH image
   (each session its own images, each image uploaded once, so nothing comes
   from the analysis cache) until its findings, all 6 pictures and the end of
   the script run show: upload to findings, timed as benchmarks/app.py does;
2. **open study**: sidebar link to *Read cases*, type the session's reader
   name, until the case to read shows;
3. **unaided read**: tick one finding, *Save unaided read*, until the aided
   read of the case (with the AI panel) shows;
4. **aided read**: *Save aided read* (the unaided answers kept), until the
   next case shows;
5. sidebar link back to *Analyze an image*.

Every ``--double-click-every``-th Save (default 3: unaided and aided saves in
turn) is a double-click, as impatient readers do. Each session reads as its
own reader; all read the same cases in the same order.

An error is an exception or an error box shown in the page, a JavaScript
error, or an action that did not finish within ``--timeout``; the session
reloads the page and goes on. Afterwards the reads each session saw saved are
compared with the database: **lost** (confirmed on the page, absent or
different in the database), **duplicated** (two rows for one reader, case and
phase) and **unexpected** (in the database, never submitted). Server CPU and
memory are sampled every second from /proc (the streamlit process and its
children), with the browser's and the rest of the machine's CPU; the load
average and the busiest other processes are recorded before the run, so a run
distorted by other jobs shows it.

Writes ``--out`` (Markdown; a hand-written section headed "What the load
test found" in it is kept) and the same name with ``.json`` (every action with
its latency). Goal (issue 12): p95 upload to findings <= 5 s with 8 sessions on
the 2-core machine, no error, no read lost or duplicated; the exit status is 1
when one of them is missed.

``--url`` drives a server started elsewhere instead; then pass ``--db``, the
reader-study database that server uses (``CXR_READER_STUDY_DB``, a scratch
file: the benchmark adds a study and readers to it), or the reads are skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks.app_driver import (
    ANALYSED,
    CHROMIUM,
    CHROMIUM_ARGS,
    FINDINGS_SHOWN_JS,
    REPO_ROOT,
    RUN_FINISHED_JS,
    SETTLE_PAUSE_S,
    VIEWPORT,
    free_port,
    process_tree,
    start_streamlit,
    stop_streamlit,
    wait_healthy,
)
from benchmarks.load_report import GOAL_P95_UPLOAD_S, write_report
from benchmarks.resources import Sampler, busy_processes, machine
from cxr_core.reporting.words import WITHHELD_NOTE

CASES = 60  # cases in the benchmark's study: more than a session reads in a few minutes
ERRORS_SHOWN = '[data-testid="stException"], [data-testid="stAlertContentError"]'
CASE_HEADING = re.compile(r"Case (\d+) of (\d+): (unaided|aided) read")
ALL_READ = "You have read every case of this study"


@dataclass
class Action:
    session: int
    kind: str  # first_visit, upload, open_study, tick (not timed), unaided_read, aided_read, open_analyze
    started_s: float  # since the measured run began
    seconds: float | None = None  # None: failed
    error: str | None = None
    detail: str = ""


@dataclass
class Submitted:
    reader: str
    position: int  # 0-based
    phase: str
    findings: list[str]
    confirmed: bool = False  # the page moved on to the next read


@dataclass
class Session:
    index: int
    images: list[Path]
    reader_base: str
    actions: list[Action] = field(default_factory=list)
    reads: list[Submitted] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    readers_used: int = 1

    @property
    def reader(self) -> str:
        return self.reader_base if self.readers_used == 1 else f"{self.reader_base}-{self.readers_used}"


class ShownError(RuntimeError):
    """The page shows an exception or an error box."""


# ---------------------------------------------------------------- the page


async def settled(page, timeout_ms: float) -> None:
    """The script run the last action started has finished (tests.app.test_browser.settle, async)."""
    await page.wait_for_timeout(SETTLE_PAUSE_S * 1000)
    await page.wait_for_function(RUN_FINISHED_JS, timeout=timeout_ms)


async def check_page(page) -> None:
    shown = page.locator(ERRORS_SHOWN)
    if await shown.count():
        # The input check withholding a film's output (about 1% of real NIH films) is the app working, not an error.
        texts = [t.strip()[:300] for t in await shown.all_inner_texts() if not t.strip().startswith(WITHHELD_NOTE[:40])]
        if texts:
            raise ShownError(" | ".join(texts) or "an exception box without text")


async def nav(page, title: str, heading: str, timeout_ms: float) -> None:
    await page.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True).click(timeout=timeout_ms)
    await page.get_by_role("heading", name=heading, exact=True).wait_for(timeout=timeout_ms)
    await settled(page, timeout_ms)


async def upload(page, image: Path, timeout_ms: float) -> str:
    await page.locator('input[type="file"]').set_input_files(str(image), timeout=timeout_ms)
    await page.locator(ANALYSED, has_text=f"Analysed {image.name}").wait_for(timeout=timeout_ms)
    await page.wait_for_function(FINDINGS_SHOWN_JS, timeout=timeout_ms)
    await settled(page, timeout_ms)
    return image.name


async def current_case(page, timeout_ms: float) -> tuple[int, int, str] | None:
    """(position, cases, phase) of the read the page asks for; None when the reader has read every case."""
    heading = page.get_by_role("heading", name=CASE_HEADING).or_(page.get_by_text(ALL_READ))
    await heading.first.wait_for(timeout=timeout_ms)
    text = await heading.first.inner_text()
    match = CASE_HEADING.search(text)
    return None if match is None else (int(match[1]) - 1, int(match[2]), match[3])


async def open_study(page, study_name: str, reader: str, timeout_ms: float):
    await nav(page, "Read cases", "Reader study", timeout_ms)
    chosen = page.locator('[data-testid="stSelectbox"]').filter(has_text="Study").first
    if study_name not in await chosen.inner_text(timeout=timeout_ms):  # a server with other studies (--url)
        await chosen.click(timeout=timeout_ms)
        await page.get_by_role("option", name=re.compile(re.escape(study_name))).click(timeout=timeout_ms)
        await settled(page, timeout_ms)
    name = page.get_by_label("Your name (as reader)")
    await name.fill(reader, timeout=timeout_ms)
    await name.press("Enter", timeout=timeout_ms)
    case = await current_case(page, timeout_ms)
    await settled(page, timeout_ms)
    return case


async def tick(page, finding: str, timeout_ms: float) -> None:
    from cxr_core.findings import DISPLAY_NAMES

    await page.locator('[data-testid="stMultiSelect"] input').first.click(timeout=timeout_ms)
    await page.keyboard.type(DISPLAY_NAMES[finding])  # filters the list: the option is shown whatever its place
    await page.get_by_role("option", name=DISPLAY_NAMES[finding], exact=True).click(timeout=timeout_ms)
    await page.keyboard.press("Escape")
    await page.locator('[role="listbox"]').wait_for(state="hidden", timeout=timeout_ms)  # its fade-out would take the next click
    await page.locator('[data-testid="stMultiSelect"] input').first.blur()  # a focused box is taller: blurring it on the click would move the button
    selected = page.locator('[data-testid="stMultiSelect"]').first
    if DISPLAY_NAMES[finding] not in await selected.inner_text(timeout=timeout_ms):
        raise ShownError(f"{DISPLAY_NAMES[finding]} was not ticked")


async def save_read(page, case: tuple[int, int, str], timeout_ms: float, double: bool = False):
    """Click (or double-click, as an impatient reader does) *Save <phase> read* and wait until the next read shows; that next read."""
    position, total, phase = case
    button = page.get_by_role("button", name=f"Save {phase} read")
    await (button.dblclick(timeout=timeout_ms) if double else button.click(timeout=timeout_ms))
    expected = (position, total, "aided") if phase == "unaided" else ((position + 1, total, "unaided") if position + 1 < total else None)
    if expected is None:
        await page.get_by_text(ALL_READ).wait_for(timeout=timeout_ms)
    else:
        await page.get_by_role("heading", name=f"Case {expected[0] + 1} of {total}: {expected[2]} read").wait_for(timeout=timeout_ms)
    if phase == "unaided":  # the aided read shows the AI panel and its heatmaps
        await page.get_by_text("AI panel", exact=False).first.wait_for(timeout=timeout_ms)
    await settled(page, timeout_ms)
    return expected


# ---------------------------------------------------------------- one user


async def run_session(browser, s: Session, url: str, study_name: str | None, t0: float, deadline: float,
                      timeout_ms: float, think_s: float, double_every: int = 0) -> None:
    from cxr_core.findings import FINDINGS

    rng = random.Random(s.index)
    context = await browser.new_context(viewport=VIEWPORT)
    page = await context.new_page()
    page.on("pageerror", lambda exc: s.page_errors.append(str(exc)[:300]))

    async def timed(kind: str, step, detail: str = "", *, measure: bool = True):
        """Await ``step``; its latency (if ``measure``) or its error is recorded as one action."""
        action = Action(s.index, kind, time.monotonic() - t0, detail=detail)
        s.actions.append(action)
        errors_before = len(s.page_errors)
        start = time.perf_counter()
        try:
            result = await step
            await check_page(page)
            if len(s.page_errors) > errors_before:
                raise ShownError("JavaScript error: " + s.page_errors[-1])
        except Exception as exc:  # noqa: BLE001 - every failure is counted and reported, then the session goes on
            action.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            raise
        waited = time.perf_counter() - start
        if not measure:
            s.actions.remove(action)
            return result
        action.seconds = waited - SETTLE_PAUSE_S  # settled() pauses before it looks
        if think_s:
            # People do not act in lockstep: each pause is uniform in [0.5, 1.5] x think.
            await asyncio.sleep(rng.uniform(0.5, 1.5) * think_s)
        return result

    async def reload_analyze():
        await page.goto(f"{url}/analyze", timeout=timeout_ms)
        await page.get_by_role("heading", name="Analyze an image").wait_for(timeout=timeout_ms)
        await settled(page, timeout_ms)

    images, ready, first = iter(s.images), False, True
    try:
        while first or time.monotonic() < deadline:  # the warm-up session (deadline passed) uploads once
            first = False
            try:
                if not ready:
                    await timed("first_visit", reload_analyze(), "goto /analyze")
                    ready = True
                    if think_s and len(s.actions) == 1:
                        # ... nor do they all upload in the same second after opening the page.
                        await asyncio.sleep(rng.uniform(0.0, think_s))
                image = next(images, None)
                if image is None:
                    break
                await timed("upload", upload(page, image, timeout_ms), image.name)
                if study_name is None or time.monotonic() >= deadline:
                    continue
                case = await timed("open_study", open_study(page, study_name, s.reader, timeout_ms), s.reader)
                if case is None:  # this reader has read every case: the next loop reads as a new reader
                    s.readers_used += 1
                else:
                    for _ in range(2):  # the unaided read of a case, then its aided read (or the other way after a resume)
                        if case is None or time.monotonic() >= deadline:
                            break
                        position, _, phase = case
                        findings = []
                        if phase == "unaided":
                            findings = [rng.choice(FINDINGS)]
                            await timed("tick", tick(page, findings[0], timeout_ms), findings[0], measure=False)
                        else:  # the aided form starts from this reader's unaided answers
                            findings = next((r.findings for r in reversed(s.reads) if r.reader == s.reader and r.position == position), [])
                        read = Submitted(s.reader, position, phase, findings)
                        s.reads.append(read)
                        double = bool(double_every) and len(s.reads) % double_every == 0
                        case = await timed(f"{phase}_read", save_read(page, case, timeout_ms, double),
                                           f"{s.reader} case {position + 1}" + (" (double-click)" if double else ""))
                        read.confirmed = True
                        if case is None:
                            s.readers_used += 1
                await timed("open_analyze", nav(page, "Analyze an image", "Analyze an image", timeout_ms))
            except Exception:  # noqa: BLE001 - recorded by timed(); start afresh on the Analyze page
                ready = False
                if time.monotonic() >= deadline:
                    break
                try:
                    await reload_analyze()
                    ready = True
                except Exception:  # noqa: BLE001 - the next loop tries again, timed
                    pass
    finally:
        await context.close()


# ---------------------------------------------------------------- the run


def create_study(db: Path, name: str):
    from cxr_core.data import NIHDataset
    from cxr_core.reader_study import ReaderStudyStore
    with ReaderStudyStore(db) as store:  # the demo set, which the app reads by default
        return store.create_study(name, NIHDataset(REPO_ROOT / "data" / "demo"), n_cases=CASES, seed=0, description="benchmarks/load.py")


def check_reads(db: Path, study_id: int, sessions: list[Session]) -> dict:
    """Reads the sessions saw saved against the database's rows for the study."""
    from cxr_core.findings import FINDINGS
    from cxr_core.reader_study import ReaderStudyStore

    with ReaderStudyStore(db) as store:
        frame = store.reads_frame(study_id)
    stored: dict[tuple[str, int, str], list[set[str]]] = {}
    for _, row in frame.iterrows():
        ticked = {f for f in FINDINGS if row[f"read_{f}"]}
        stored.setdefault((row["reader"].lower(), int(row["position"]), row["phase"]), []).append(ticked)
    submitted = {(r.reader.lower(), r.position, r.phase): r for s in sessions for r in s.reads}
    lost, different = [], []
    for key, read in submitted.items():
        if not read.confirmed:
            continue
        rows = stored.get(key)
        if not rows:
            lost.append(f"{read.reader} case {read.position + 1} {read.phase}")
        elif rows[0] != set(read.findings):
            different.append(f"{read.reader} case {read.position + 1} {read.phase}: submitted {sorted(read.findings)}, stored {sorted(rows[0])}")
    duplicated = [f"{k[0]} case {k[1] + 1} {k[2]} x{len(v)}" for k, v in stored.items() if len(v) > 1]
    unexpected = [f"{k[0]} case {k[1] + 1} {k[2]}" for k in stored if k not in submitted]
    unconfirmed = [(key, read) for key, read in submitted.items() if not read.confirmed]
    return {
        "submitted": len(submitted), "confirmed": sum(r.confirmed for r in submitted.values()), "stored": len(frame),
        "lost": lost + different, "duplicated": duplicated, "unexpected": unexpected,
        "unconfirmed_stored": sum(key in stored for key, _ in unconfirmed), "unconfirmed_absent": sum(key not in stored for key, _ in unconfirmed),
    }


async def drive(url: str, sessions: list[Session], warm_image: Path | None, study_name: str | None, seconds: float,
                timeout_ms: float, think_s: float, double_every: int, sampler: Sampler) -> dict:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            # Not measured: the first upload waits for the model, which the server loads once at start. With --cold
            # (warm_image None) there is none: the sessions' opening uploads meet a server that has loaded nothing.
            warm = Session(-1, [warm_image] if warm_image else [], "load warm-up")
            if warm_image:
                await run_session(browser, warm, url, None, time.monotonic(), time.monotonic() + 1, timeout_ms * 3, 0.0)
            sampler.start()
            t0 = time.monotonic()
            await asyncio.gather(*(run_session(browser, s, url, study_name, t0, t0 + seconds, timeout_ms, think_s, double_every) for s in sessions))
            elapsed = time.monotonic() - t0
        finally:
            sampler.stop()
            await browser.close()
    return {"warm_up": [asdict(a) for a in warm.actions], "elapsed_s": round(elapsed, 1)}


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    v = np.asarray(values)
    return {"n": len(v), "p50_s": round(float(np.percentile(v, 50)), 2), "p95_s": round(float(np.percentile(v, 95)), 2),
            "max_s": round(float(v.max()), 2), "mean_s": round(float(v.mean()), 2)}


def summarise(sessions: list[Session]) -> dict:
    actions = [a for s in sessions for a in s.actions]
    by_kind = {}
    for kind in ("upload", "open_study", "unaided_read", "aided_read", "open_analyze", "first_visit"):
        by_kind[kind] = percentiles([a.seconds for a in actions if a.kind == kind and a.seconds is not None])
    by_kind["reader_study_read"] = percentiles([a.seconds for a in actions if a.kind.endswith("_read") and a.seconds is not None])
    errors = [f"session {a.session + 1} {a.kind} {a.detail} at {a.started_s:.0f} s: {a.error}".replace("  ", " ") for a in actions if a.error]
    return {"latency": by_kind, "errors": errors, "actions": [asdict(a) for a in actions],
            "per_session": [{"session": s.index + 1, "uploads": sum(a.kind == "upload" and a.seconds is not None for a in s.actions),
                             "reads": sum(r.confirmed for r in s.reads), "errors": sum(bool(a.error) for a in s.actions)} for s in sessions]}


def server_log_errors(log: Path | None) -> list[str]:
    """The exception line of each traceback the server printed."""
    if log is None or not log.is_file():
        return []
    lines, errors = log.read_text(errors="replace").splitlines(), []
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            last = next((x for x in lines[i + 1:] if x and not x[0].isspace() and not x.startswith("Traceback")), "")
            errors.append(last.strip()[:300] or "a traceback without an exception line")
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8, help="simultaneous browser sessions")
    parser.add_argument("--seconds", type=float, default=120.0, help="how long the sessions run")
    parser.add_argument("--bundle", default=os.environ.get("CXR_ASSIST_BUNDLE", "models/default"), help="model bundle folder")
    parser.add_argument("--images", default=str(REPO_ROOT.parent / "shared" / "nih" / "images"), help="folder of NIH images to upload")
    parser.add_argument("--think", type=float, default=0.0, help="seconds a session pauses after each action")
    parser.add_argument("--double-click-every", type=int, default=3, metavar="N",
                        help="double-click Save on every N-th read of a session, as an impatient reader does (0: never)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds an action may take before it counts as an error")
    parser.add_argument("--cold", action="store_true",
                        help="no warm-up upload first: the sessions start as soon as the server answers, so their "
                             "opening uploads include loading the model")
    parser.add_argument("--url", help="drive this running server instead of starting one")
    parser.add_argument("--db", help="with --url: the reader-study database that server uses (a scratch file)")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "LOAD_RESULTS.md"), help="Markdown report; the JSON goes beside it")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (database, server log)")
    args = parser.parse_args(argv)
    bundle = Path(args.bundle).resolve()
    if args.url is None and not (bundle / "bundle.json").is_file():
        parser.error(f"no model bundle at {bundle} (pass --bundle)")
    if not Path(CHROMIUM).is_file():
        parser.error(f"{CHROMIUM} is missing: apt-get install chromium")
    images = sorted(Path(args.images).glob("*.png"))
    if len(images) < args.sessions * 2 + 1:
        parser.error(f"{args.images} holds {len(images)} PNG images; need more than {args.sessions * 2}")
    if args.db and not args.url:
        parser.error("--db goes with --url (without --url the benchmark makes its own database)")

    command = " ".join(["python -m benchmarks.load", shlex.join(argv if argv is not None else sys.argv[1:])]).strip()
    stamp = datetime.now(timezone.utc)
    workdir = Path(tempfile.mkdtemp(prefix="cxr-load-"))
    db = Path(args.db).resolve() if args.db else (None if args.url else workdir / "reader_study.sqlite3")
    study_name = f"load test {stamp:%Y%m%d-%H%M%S}"

    print(f"measuring the machine's load for 3 s (workdir {workdir})", flush=True)
    load_before = os.getloadavg()
    others = busy_processes(3.0, exclude=process_tree(os.getpid()))
    study = create_study(db, study_name) if db is not None else None

    process, log, url = None, None, args.url
    if url is None:
        port = free_port()
        log = workdir / "streamlit.log"
        env = {**os.environ, "CXR_ASSIST_BUNDLE": str(bundle), "CXR_READER_STUDY_DB": str(db), "TF_CPP_MIN_LOG_LEVEL": "2"}
        with open(log, "wb") as out:
            process = start_streamlit(port, env, out)
        url = f"http://127.0.0.1:{port}"
    url = url.rstrip("/")
    # Each session uploads its own images, spread over the folder; one more image for the warm-up.
    per_session = max(2, len(images) // (args.sessions + 1))
    sessions = [Session(i, images[i::args.sessions + 1][:per_session], f"Load reader {i + 1} {stamp:%H%M%S}") for i in range(args.sessions)]
    warm_image = images[args.sessions]
    try:
        if process is not None:
            wait_healthy(url, process)
        sampler = Sampler(process.pid if process else None)
        print(f"{args.sessions} sessions for {args.seconds:.0f} s against {url}", flush=True)
        driven = asyncio.run(drive(url, sessions, None if args.cold else warm_image, study_name if study else None, args.seconds,
                                   args.timeout * 1000, args.think, args.double_click_every, sampler))
    finally:
        if process is not None:
            stop_streamlit(process)

    result = {
        "date": f"{stamp:%Y-%m-%d %H:%M} UTC", "command": command, "machine": machine(), "load_before": [round(v, 2) for v in load_before],
        "other_jobs_before": others, "bundle": str(bundle.relative_to(REPO_ROOT) if bundle.is_relative_to(REPO_ROOT) else bundle),
        "server": f"started by the benchmark on {url}" if process else f"{url} (started elsewhere)", "server_sampled": process is not None,
        "sessions": args.sessions, "seconds": args.seconds, "think_s": args.think, "cold": args.cold, "double_click_every": args.double_click_every, "timeout_s": args.timeout, **driven,
        "summary": summarise(sessions), "resources": sampler.summary(),
        "reads": check_reads(db, study.id, sessions) if study else {"submitted": 0, "confirmed": 0, "stored": 0, "lost": [], "duplicated": [],
                                                                    "unexpected": [], "unconfirmed_stored": 0, "unconfirmed_absent": 0},
        "server_log_errors": server_log_errors(log),
        "load_after": [round(v, 2) for v in os.getloadavg()],
    }
    out = Path(args.out)
    write_report(out, result)
    lat = result["summary"]["latency"]
    print(out.read_text())
    if not args.keep and args.url is None:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"kept {workdir}")
    ok = (lat["upload"].get("p95_s", float("inf")) <= GOAL_P95_UPLOAD_S and not result["summary"]["errors"]
          and not result["reads"]["lost"] and not result["reads"]["duplicated"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
