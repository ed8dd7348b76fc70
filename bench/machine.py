"""What the benchmarks say of the machine they ran on: these machines differ from day to day and
are shared, so a figure means something only beside these."""

from __future__ import annotations

import os
import time
from pathlib import Path


def machine_cpu() -> tuple[float, float]:
    """(busy, idle) CPU-seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / tick, idle / tick


def python_speed() -> float:
    """Seconds for ten million steps of a Python loop: these machines differ from day to day, so
    figures from two runs compare only with this beside them."""
    started = time.perf_counter()
    total = 0
    for i in range(10_000_000):
        total += i
    return time.perf_counter() - started
