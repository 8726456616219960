"""The DICOM node with a real PACS: from a film stored in Orthanc to its SR stored in Orthanc.

    python -m benchmarks.pacs [--single 20] [--burst 50] [--out benchmarks/PACS_RESULTS.json]

Starts Debian's Orthanc on 127.0.0.1 (tests/pacs_harness.py: its Lua script
routes CR/DX films to the node) and ``python -m training.node`` sending results
back by C-STORE, then measures, for each film, the time from the start of its
C-STORE into Orthanc to the moment Orthanc holds its Structured Report:

- ``single``: films stored one at a time, each after the previous one's SR came back;
- ``burst``: ``--burst`` films stored at once (one association);
- ``burst_restart``: the same, with the node killed (SIGKILL) once a third of the SRs
  came back and restarted at once; counts the SRs per film (exactly one each: nothing lost, nothing doubled).

The films are the real chest film of tests/dicom_sources.py (512 px, three
transfer syntaxes) with synthetic UIDs, one study each. Orthanc is polled every
50 ms, so times are +- 0.05 s. Results go to ``--out`` and its ``.md`` twin.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
CASES = ("chest8-explicit-le", "chest8-jpeg-ls-lossless", "chest8-rle")
POLL = 0.05


def _sr_studies(orthanc, since: int) -> tuple[dict[str, float], int]:
    """Study UIDs of the node's SRs stored in Orthanc since change ``since``, with when this poll saw them."""
    from tests.pacs_harness import NodeProcess  # noqa: F401  (the harness, imported with the benchmark's path)

    seen, now = {}, time.perf_counter()
    while True:
        page = orthanc.get(f"/changes?since={since}&limit=500").json()
        for change in page["Changes"]:
            if change["ChangeType"] != "NewInstance":
                continue
            tags = orthanc.get(f"/instances/{change['ID']}/simplified-tags").json()
            if tags.get("Manufacturer") == "cxr-assist" and tags.get("Modality") == "SR":
                seen[tags["StudyInstanceUID"]] = now
        since = page["Last"]
        if page["Done"]:
            return seen, since


def _studies(paths) -> list[str]:
    import pydicom

    return [str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in paths]


def _wait(orthanc, studies: list[str], started: dict[str, float], since: int, *, timeout: float,
          on_progress=None) -> tuple[dict[str, float], int]:
    """Seconds from each film's store to its SR in Orthanc (missing ones after ``timeout`` are left out)."""
    arrived: dict[str, float] = {}
    deadline = time.perf_counter() + timeout
    while len(arrived) < len(studies) and time.perf_counter() < deadline:
        seen, since = _sr_studies(orthanc, since)
        for study, when in seen.items():
            if study in started and study not in arrived:
                arrived[study] = when - started[study]
        if on_progress:
            on_progress(len(arrived))
        time.sleep(POLL)
    return arrived, since


def _summary(latencies: list[float], n: int, wall: float) -> dict:
    values = np.asarray(latencies, dtype=float)
    return {"films": n, "srs_back": len(values),
            "median_s": round(float(np.median(values)), 2) if len(values) else None,
            "p95_s": round(float(np.percentile(values, 95)), 2) if len(values) else None,
            "max_s": round(float(values.max()), 2) if len(values) else None,
            "wall_s": round(wall, 2), "films_per_s": round(len(values) / wall, 2) if wall else None}


def _sr_count_per_study(orthanc, studies: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(studies, 0)
    for inst in orthanc.get("/instances?expand").json():
        tags = orthanc.get(f"/instances/{inst['ID']}/simplified-tags").json()
        if tags.get("Manufacturer") == "cxr-assist" and tags.get("Modality") == "SR" and tags["StudyInstanceUID"] in counts:
            counts[tags["StudyInstanceUID"]] += 1
    return counts


def _counts(inbox: Path) -> dict:
    """The node's state counts, read from its database (as --status does)."""
    from cxr_core.pacs.state import read_only_state

    state = read_only_state(inbox)
    try:
        return state.counts()
    finally:
        state.close()


def run(single: int, burst: int, folder: Path) -> dict:
    from tests.pacs_harness import NodeProcess, Orthanc, chest_films, free_port

    node_port = free_port()
    orthanc = Orthanc(folder / "orthanc", node=("CXR_ASSIST", node_port)).start()
    node = NodeProcess(folder / "inbox", send_to=f"ORTHANC@127.0.0.1:{orthanc.dicom_port}", port=node_port)
    results: dict = {}
    try:
        t0 = time.perf_counter()
        node.start()
        results["node_start_s"] = round(time.perf_counter() - t0, 2)
        results["runtime"] = "litert" if "litert runtime" in node.log() else "keras"
        since = orthanc.get("/changes?last").json()["Last"]

        # One at a time.
        films = chest_films(folder / "single", single, cases=CASES, seed="bench-single")
        latencies, t0 = [], time.perf_counter()
        for film, study in zip(films, _studies(films)):
            started = {study: time.perf_counter()}
            assert orthanc.store_files([film]) == [0]
            arrived, since = _wait(orthanc, [study], started, since, timeout=120)
            latencies += list(arrived.values())
        results["single"] = _summary(latencies, single, time.perf_counter() - t0)
        print("single", results["single"], file=sys.stderr)

        # A burst.
        for name, restart in (("burst", False), ("burst_restart", True)):
            films = chest_films(folder / name, burst, cases=CASES, seed=f"bench-{name}")
            studies = _studies(films)
            killed = {"done": False}

            def kill_at_a_third(count: int) -> None:
                if restart and not killed["done"] and count >= burst // 3:
                    killed["done"] = True
                    node.kill9()
                    killed["srs_back_at_kill"] = count
                    killed["node_state_at_kill"] = _counts(node.inbox)
                    node.start(wait_ready=False)

            t0 = time.perf_counter()
            statuses = orthanc.store_files(films)
            stored_at = time.perf_counter()
            started = dict.fromkeys(studies, t0)
            arrived, since = _wait(orthanc, studies, started, since, timeout=600, on_progress=kill_at_a_third)
            wall = time.perf_counter() - t0
            entry = _summary(list(arrived.values()), burst, wall)
            entry["store_all_s"] = round(stored_at - t0, 2)
            entry["stored_in_orthanc"] = sum(s == 0 for s in statuses)
            counts = _sr_count_per_study(orthanc, studies)
            entry["films_without_sr"] = sum(c == 0 for c in counts.values())
            entry["films_with_more_than_one_sr"] = sum(c > 1 for c in counts.values())
            if restart:
                entry["killed_after_srs"] = killed.get("srs_back_at_kill")
                entry["node_state_at_kill"] = killed.get("node_state_at_kill")
                entry["node_starts_in_log"] = node.log().count(" ready (")
            results[name] = entry
            print(name, entry, file=sys.stderr)
        results["node_status"] = node.status()["counts"]
    finally:
        node.stop()
        orthanc.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pacs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--single", type=int, default=20, help="films stored one at a time")
    parser.add_argument("--burst", type=int, default=50, help="films stored at once")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "PACS_RESULTS.json")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="cxr-pacs-bench-") as folder:
        results = run(args.single, args.burst, Path(folder))
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_before": load_before, "load_after": os.getloadavg()[0]}
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return 0


def markdown(r: dict) -> str:
    rows = ["| run | films | SRs back | median (s) | p95 (s) | max (s) | films/s | lost | doubled |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, label in (("single", "one at a time"), ("burst", "burst"), ("burst_restart", "burst, node killed -9 and restarted")):
        e = r.get(name)
        if not e:
            continue
        lost = e.get("films_without_sr", e["films"] - e["srs_back"])
        if name == "burst_restart":
            label += f" after {e.get('killed_after_srs')} SRs (queue at the kill: {e.get('node_state_at_kill')})"
        rows.append(f"| {label} | {e['films']} | {e['srs_back']} | {e['median_s']} | {e['p95_s']} | {e['max_s']} | "
                    f"{e['films_per_s']} | {lost} | {e.get('films_with_more_than_one_sr', 0)} |")
    return ("# The DICOM node with Orthanc: film stored -> SR stored\n\n"
            f"`python -m benchmarks.pacs` on {r['machine']['cpus']} cores (1-minute load average before "
            f"{r['machine']['load_before']:.2f}, after {r['machine']['load_after']:.2f}); "
            f"node runtime: {r['runtime']}, node start to model ready {r['node_start_s']} s. Time from the start of a "
            "film's C-STORE into Orthanc to its SR stored in Orthanc (polled every 50 ms); in a burst every film's "
            "clock starts when the burst starts.\n\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    sys.exit(main())
