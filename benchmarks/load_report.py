"""The load test's report: Markdown with the latency table, errors, reads and resources, and the raw JSON.

Split from ``benchmarks/load.py``, which drives the sessions; a hand-written
section headed :data:`KEPT_SECTION` in an existing report is kept when the
numbers are rewritten.
"""

from __future__ import annotations

import json
from pathlib import Path

GOAL_P95_UPLOAD_S = 5.0
KEPT_SECTION = "## What the load test found"  # this section of --out, written by hand, is kept when the numbers are rewritten


def write_report(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lat, db, cpu, m = result["summary"]["latency"], result["reads"], result["resources"], result["machine"]
    cores = m["cores"] or 1
    load = result["load_before"]
    others = result["other_jobs_before"]
    # What other processes used is measured before and during the run; the load average is
    # not the test (it lags by minutes: a benchmark that just ended still shows in it).
    busy = any(p["cores"] >= 0.25 for p in others) or cpu.get("other_cpu_cores_mean", 0) >= 0.25
    up = lat["upload"]
    met = up.get("n") and up["p95_s"] <= GOAL_P95_UPLOAD_S
    n_errors = len(result["summary"]["errors"]) + len(result["server_log_errors"])

    def row(name: str, key: str) -> str:
        v = lat[key]
        if not v.get("n"):
            return f"| {name} | 0 | | | |"
        return f"| {name} | {v['n']} | {v['p50_s']:.2f} s | **{v['p95_s']:.2f} s** | {v['max_s']:.2f} s |"

    n = result["double_click_every"]
    doubles = f"every {n}{'st' if n == 1 else 'nd' if n == 2 else 'rd' if n == 3 else 'th'} Save a double-click" if n else "no double-clicks"
    lines = [
        "# Many users on one app (benchmarks/load.py)",
        "",
        f"`{result['command']}`",
        "",
        f"{result['sessions']} simultaneous browser sessions (one chromium, one Playwright context each) against one "
        f"`streamlit run app.py` for {result['seconds']:.0f} s (ran {result['elapsed_s']:.0f} s), think time {result['think_s']:g} s, "
        f"{doubles}. Each session loops: upload a real NIH image on Analyze (its own images, each once, so never from the analysis cache) "
        "and wait for the findings, 6 pictures and the end of the script run; open *Read cases* and enter its reader name; "
        "save the unaided read of the next case (one finding ticked) and wait for the aided read with the AI panel; save the aided read "
        "and wait for the next case; back to Analyze. The reader study is the benchmark's own, in a temporary database. "
        "Method in the module docstring.",
        "",
        f"## {result['date']}",
        "",
    ]
    if busy:
        lines += [
            f"**Measured on a busy machine: the timings are distorted.** Load average before the run "
            f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} on {cores} cores; other processes used "
            f"{cpu.get('other_cpu_cores_mean', float('nan')):.2f} cores on average during the run. Rerun on a quiet machine for the final numbers.",
            "",
        ]
    lines += [
        f"Machine: {cores} cores ({m['cpu'] or 'unknown CPU'}), {m['memory_gib']} GiB, {m['platform']}, Python {m['python']}. "
        f"Load average before the run (1 / 5 / 15 min): **{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}**.",
        "",
        "Other jobs running before the run (processes using >= 5% of a core over 3 s): "
        + ("none." if not others else "; ".join(f"`{p['command'][:100] or p['name']}` ({p['cores']:.2f} cores)" for p in others[:5]) + "."),
        "",
        f"Model bundle: `{result['bundle']}`. Server: {result['server']}.",
        "",
        f"### Latency per action (goal: p95 upload to findings <= {GOAL_P95_UPLOAD_S:g} s: "
        + ("**met**" if met else "**missed**") + (", on a busy machine" if busy else "") + ")",
        "",
        "| action | n | p50 | p95 | max |",
        "|---|---:|---:|---:|---:|",
        row("upload to findings", "upload"),
        row("reader-study read (unaided + aided save)", "reader_study_read"),
        row("&nbsp; unaided read saved, aided read with AI panel shown", "unaided_read"),
        row("&nbsp; aided read saved, next case shown", "aided_read"),
        row("open the study (sidebar link, reader name, case shown)", "open_study"),
        row("back to Analyze (sidebar link)", "open_analyze"),
        row("a session's first page (goto /analyze, until rendered)", "first_visit"),
        "",
        ("No warm-up upload (--cold): the sessions started as soon as the server answered, so their opening uploads "
         "include loading the model and are counted above." if result.get("cold") else
         "Warm-up upload (not counted; the server's first upload, which may wait for the model): "
         + ", ".join(f"{a['seconds']:.2f} s" if a["seconds"] is not None else f"failed ({a['error']})"
                     for a in result["warm_up"] if a["kind"] == "upload") + "."),
        "",
        f"### Errors: {n_errors} (goal 0)",
        "",
    ]
    lines += [f"* {e}" for e in result["summary"]["errors"][:30]] + [f"* server log: {e}" for e in result["server_log_errors"][:10]]
    if n_errors:
        lines.append("")
    lines += [
        f"### Reads in the study database: {len(db['lost'])} lost, {len(db['duplicated'])} duplicated (goal 0)",
        "",
        f"{db['confirmed']} reads confirmed on the page ({db['submitted']} submitted), {db['stored']} rows in the database; "
        f"lost or changed: {len(db['lost'])}, duplicated: {len(db['duplicated'])}, in the database but never submitted: {len(db['unexpected'])}; "
        f"submitted but not confirmed (an action that failed): {db['unconfirmed_stored']} stored, {db['unconfirmed_absent']} not stored.",
        "",
    ]
    lines += [f"* {e}" for e in (db["lost"] + db["duplicated"] + db["unexpected"])[:20]]
    lines += [
        "### Server and client resources (sampled every second from /proc)",
        "",
        "| | CPU (cores, mean) | CPU (cores, p95 of 1 s) | memory (RSS) |",
        "|---|---:|---:|---:|",
        (f"| server: streamlit and its children ({cpu.get('server_processes_max', '?')} processes) | {cpu.get('server_cpu_cores_mean', float('nan')):.2f} "
         f"| {cpu.get('server_cpu_cores_p95_1s', float('nan')):.2f} | {cpu.get('server_rss_mib_start', 0)} MiB at start, "
         f"{cpu.get('server_rss_mib_peak', 0)} MiB peak, {cpu.get('server_rss_mib_end', 0)} MiB at the end |" if result["server_sampled"] else
         "| server: started elsewhere (--url), not sampled; its CPU counts under other processes | | | |"),
        f"| client: this script, Playwright, chromium with {result['sessions']} sessions | {cpu.get('client_cpu_cores_mean', float('nan')):.2f} | "
        f"| {cpu.get('client_rss_mib_peak', 0)} MiB peak |",
        f"| other processes on the machine | {cpu.get('other_cpu_cores_mean', float('nan')):.2f} | | |",
        f"| whole machine ({cores} cores) | {cpu.get('machine_cpu_cores_mean', float('nan')):.2f} | | |",
        "",
        "The browsers run on the same cores as the server: on a 2-core machine they compete with it, so these latencies "
        "include the client's cost.",
        "",
        "Per session: " + ", ".join(f"{p['session']}: {p['uploads']} uploads, {p['reads']} reads, {p['errors']} errors"
                                    for p in result["summary"]["per_session"]) + ".",
        "",
        f"Load average after the run: {result['load_after'][0]:.2f} / {result['load_after'][1]:.2f} / {result['load_after'][2]:.2f}. "
        f"Raw numbers, every action with its latency: `{out.with_suffix('.json').name}`.",
        "",
    ]
    # A hand-written section about what the load test found and what was fixed survives a rerun.
    kept = out.read_text().split(KEPT_SECTION, 1) if out.is_file() else []
    out.write_text("\n".join(lines) + (f"\n{KEPT_SECTION}{kept[1]}" if len(kept) == 2 else ""))
