"""What the machine is and what each side of a benchmark uses of it, from /proc.

:func:`machine` (cores, CPU model, memory), :func:`busy_processes` (the other
jobs, sampled before a run, so a run distorted by them says so) and
:class:`Sampler` (CPU and memory of the server's process tree, the client's
and the whole machine's, every second). Linux only, as the benchmarks are.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.app_driver import proc_stats, process_tree


def machine() -> dict:
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    memory = 0
    try:
        memory = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))) * 1024
    except (OSError, StopIteration):
        pass
    return {"cores": os.cpu_count(), "cpu": model, "memory_gib": round(memory / 2**30, 1), "platform": platform.platform(),
            "python": platform.python_version()}


def _cmdline(pid: int) -> str:
    try:
        text = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
    return text if len(text) <= 160 else text[:157] + "..."


def busy_processes(seconds: float = 3.0, exclude: set[int] = frozenset(), min_cores: float = 0.05) -> list[dict]:
    """Processes that used at least ``min_cores`` of a core over ``seconds`` (the other jobs on the machine)."""
    before = proc_stats()
    time.sleep(seconds)
    after = proc_stats()
    busy = []
    for pid, (name, _, cpu, rss) in after.items():
        if pid in exclude or pid not in before:
            continue
        cores = (cpu - before[pid][2]) / seconds
        if cores >= min_cores:
            busy.append({"pid": pid, "name": name, "cores": round(cores, 2), "rss_mib": round(rss / 2**20), "command": _cmdline(pid)})
    return sorted(busy, key=lambda p: -p["cores"])


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]  # guest time is already in user
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


class Sampler(threading.Thread):
    """Every ``interval`` s: CPU and resident memory of the server's process tree, the client's (this process,
    the Playwright driver, chromium) and the whole machine's CPU."""

    def __init__(self, server_pid: int | None, interval: float = 1.0) -> None:
        super().__init__(name="load-sampler", daemon=True)
        self.server_pid, self.interval = server_pid, interval
        self.samples: list[dict] = []
        self._halt = threading.Event()
        # CPU seconds last seen per process of each side: chromium starts and ends renderer
        # processes as pages change, and a process that has exited must keep counting.
        self._seen: dict[str, dict[int, float]] = {"server": {}, "client": {}}

    def snapshot(self) -> dict:
        stats = proc_stats()
        server = process_tree(self.server_pid, stats) if self.server_pid else set()
        client = process_tree(os.getpid(), stats) - server
        for side, pids in (("server", server), ("client", client)):
            self._seen[side].update({p: stats[p][2] for p in pids})
        busy, total = _machine_ticks()
        tick = os.sysconf("SC_CLK_TCK")
        return {"t": time.monotonic(), "server_cpu_s": sum(self._seen["server"].values()), "server_rss": sum(stats[p][3] for p in server),
                "server_processes": len(server), "client_cpu_s": sum(self._seen["client"].values()),
                "client_rss": sum(stats[p][3] for p in client), "machine_busy_s": busy / tick, "machine_total_s": total / tick}

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append(self.snapshot())
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        self.samples.append(self.snapshot())

    def summary(self) -> dict:
        s = self.samples
        if len(s) < 2:
            return {}
        wall = s[-1]["t"] - s[0]["t"]
        server_rate = [(b["server_cpu_s"] - a["server_cpu_s"]) / max(b["t"] - a["t"], 1e-6) for a, b in zip(s, s[1:])]
        machine = s[-1]["machine_busy_s"] - s[0]["machine_busy_s"]  # CPU seconds, all CPUs together
        server = s[-1]["server_cpu_s"] - s[0]["server_cpu_s"]
        client = s[-1]["client_cpu_s"] - s[0]["client_cpu_s"]
        return {
            "wall_s": round(wall, 1),
            "server_cpu_cores_mean": round(server / wall, 2),
            "server_cpu_cores_p95_1s": round(float(np.percentile(server_rate, 95)), 2),
            "server_rss_mib_start": round(s[0]["server_rss"] / 2**20),
            "server_rss_mib_peak": round(max(x["server_rss"] for x in s) / 2**20),
            "server_rss_mib_end": round(s[-1]["server_rss"] / 2**20),
            "server_processes_max": max(x["server_processes"] for x in s),
            "client_cpu_cores_mean": round(client / wall, 2),
            "client_rss_mib_peak": round(max(x["client_rss"] for x in s) / 2**20),
            "machine_cpu_cores_mean": round(machine / wall, 2),
            "other_cpu_cores_mean": round(max(machine - server - client, 0.0) / wall, 2),
        }
