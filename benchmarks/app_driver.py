"""What the browser benchmarks share (benchmarks/app.py, benchmarks/load.py): the server, CPU accounting, page conditions.

The browser side (chromium path and flags, window size, free port, health
check) comes from tests/app/test_browser.py, so the test and the benchmarks drive
the app the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cxr_core.reporting.words import WITHHELD_NOTE
from tests.app.test_browser import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, free_port, settle, wait_healthy

__all__ = [
    "CHROMIUM", "CHROMIUM_ARGS", "VIEWPORT", "free_port", "settle", "wait_healthy", "REPO_ROOT",
    "ANALYSED", "FINDINGS_SHOWN_JS", "RUN_FINISHED_JS", "SETTLE_PAUSE_S", "start_streamlit", "stop_streamlit",
    "cpu_seconds", "proc_stats", "process_tree", "tree_usage",
]

REPO_ROOT = Path(__file__).resolve().parents[1]

# Analyze page: the caption naming the analysed file (has_text=f"Analysed {name}"),
# then all 6 pictures (image, chosen heatmap, top-4 grid) loaded.
ANALYSED = '[data-testid="stCaptionContainer"]'
# The analysis is on the page: its 6 pictures loaded, or, for a film the input check withholds (about 1% of real
# NIH films: benchmarks/OOD_RESULTS.md), the withheld notice and the film itself (an analysis all the same).
FINDINGS_SHOWN_JS = (
    "() => { const imgs = [...document.querySelectorAll('[data-testid=\"stImage\"] img')];"
    " const loaded = imgs.every(i => i.complete && i.naturalWidth > 0);"
    f" const withheld = document.body.innerText.includes({json.dumps(WITHHELD_NOTE[:40])});"
    " return loaded && (imgs.length >= 6 || (withheld && imgs.length >= 1)); }"
)
# The script run the last action started has finished: the status widget shows no running icon (it may still
# show "Source file changed" on a server with a file watcher, which tests.app.test_browser.settle, waiting for no
# status widget at all, would wait for forever). Looked for after a pause of SETTLE_PAUSE_S, which a timing subtracts.
RUN_FINISHED_JS = "() => !document.querySelector('[data-testid=\"stStatusWidgetRunningIcon\"]')"
SETTLE_PAUSE_S = 0.3


def start_streamlit(port: int, env: dict[str, str], log=subprocess.DEVNULL, *, entry: str = "app.py") -> subprocess.Popen:
    """``streamlit run app.py`` headless on 127.0.0.1:``port`` (no file watcher, no usage stats); output to ``log``.

    ``entry="streamlit_app.py"`` runs the pages without app.py's server (the model then starts getting ready only
    after the first page has run), for comparison."""
    return subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", entry, "--server.port", str(port), "--server.address", "127.0.0.1",
         "--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT if log is not subprocess.DEVNULL else subprocess.DEVNULL,
    )


def stop_streamlit(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def proc_stats() -> dict[int, tuple[str, int, float, int]]:
    """pid -> (name, parent pid, user + system CPU seconds, resident bytes) of every process /proc shows."""
    tick, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        pid, name = int(text.split(" ", 1)[0]), text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()  # fields[0] is the state (stat field 3)
        stats[pid] = (name, int(fields[1]), (int(fields[11]) + int(fields[12])) / tick, int(fields[21]) * page)
    return stats


def cpu_seconds(pids: set[int] | None = None, names: tuple[str, ...] = ()) -> float:
    """User + system CPU seconds of the given processes and of every process whose name starts with one of ``names``."""
    return sum(cpu for pid, (name, _, cpu, _) in proc_stats().items() if (pids and pid in pids) or name.startswith(names))


def process_tree(root: int, stats: dict | None = None) -> set[int]:
    """``root`` and all its descendants that are alive now."""
    stats = proc_stats() if stats is None else stats
    tree, grew = {root} & stats.keys(), True
    while grew:
        more = {pid for pid, (_, parent, _, _) in stats.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return tree


def tree_usage(root: int) -> tuple[float, int]:
    """(CPU seconds, resident bytes) of ``root`` and its descendants, summed, now."""
    stats = proc_stats()
    tree = process_tree(root, stats)
    return sum(stats[p][2] for p in tree), sum(stats[p][3] for p in tree)
