"""The targets the benchmark report checks, apart from the code that measures and the code that reports.

Each target names the figure it reads from the results (benchmarks/run.py's
``latest.json``), how it compares and the threshold. Ratios are between two
figures measured in the same run.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["TARGETS", "Target"]


@dataclass(frozen=True)
class Target:
    label: str
    op: str  # ">=" or "<="
    threshold: float
    unit: str
    value: Callable[[dict[str, Any]], float]

    def met(self, results: dict[str, Any]) -> bool:
        v = self.value(results)
        return v >= self.threshold if self.op == ">=" else v <= self.threshold


def ratio(a: str, b: str) -> Callable[[dict[str, Any]], float]:
    """The ratio of the two medians."""
    return lambda r: float(r["throughput"][a]["median"] / r["throughput"][b]["median"])


def paired(a: str, b: str) -> Callable[[dict[str, Any]], float]:
    """The median of the run-by-run ratios: a and b ran back to back, so a noisy moment mostly hits both."""

    def get(r: dict[str, Any]) -> float:
        pairs = zip(r["throughput"][a]["runs"], r["throughput"][b]["runs"], strict=True)
        return float(statistics.median(x / y for x, y in pairs))

    return get


def many(where: str, names: str, key: str) -> Callable[[dict[str, Any]], float]:
    def get(r: dict[str, Any]) -> float:
        row = next(x for x in r["many_streams"] if x["where"] == where and x["names"] == names and x["workers"] == 1)
        value = row[key]
        return float(max(value) if isinstance(value, list) else value)

    return get


TARGETS = [
    Target("default settings (batch 100) / `send_task` loop with one reused producer", ">=", 4.0, "x",
           ratio("bridge_default_b100", "send_task_loop")),
    Target("batch 500 / `send_task` loop with one reused producer", ">=", 8.0, "x",
           ratio("bridge_default_b500", "send_task_loop")),
    Target("default settings (batch 100) / minimal hand-written bridge (batch 100)", ">=", 0.8, "x",
           ratio("bridge_default_b100", "minimal_bridge_b100")),
    Target("batch 500 / minimal hand-written bridge (batch 500)", ">=", 0.8, "x",
           ratio("bridge_default_b500", "minimal_bridge_b500")),
    Target("the same two, median of the run-by-run ratios (batch 100)", ">=", 0.8, "x",
           paired("bridge_default_b100", "minimal_bridge_b100")),
    Target("the same two, median of the run-by-run ratios (batch 500)", ">=", 0.8, "x",
           paired("bridge_default_b500", "minimal_bridge_b500")),
    Target("standard path (batch 100) / `send_task` in `Producer.batch()`", ">=", 1.0, "x",
           ratio("bridge_standard_b100", "send_task_batch")),
    Target("standard path (batch 100) / naive bridge", ">=", 5.0, "x",
           ratio("bridge_standard_b100", "naive_bridge")),
    Target("latency XADD -> task start at 300/s, default settings, p50", "<=", 3.0, "ms",
           lambda r: float(r["latency"]["default"]["p50_ms"])),
    Target("latency XADD -> task start at 300/s, default settings, p99", "<=", 30.0, "ms",
           lambda r: float(r["latency"]["default"]["p99_ms"])),
    Target("worker RSS growth from 10,000 to 200,000 entries", "<=", 10.0, "MB",
           lambda r: float(r["memory"]["growth_mb"])),
    Target("idle CPU of a worker with the bridge, streams empty", "<=", 1.0, "% of a core",
           lambda r: float(r["idle_cpu_percent"]["with_bridge"])),
    Target("Redis Cluster, 1 worker x 100 untagged streams: threads in the worker", "<=", 5, "",
           many("3-master cluster", "bench:N", "threads")),
    Target("Redis Cluster, 1 worker x 100 untagged streams: worker RSS after 20,000 entries", "<=", 80.0, "MB",
           many("3-master cluster", "bench:N", "rss_mb_end")),
]  # fmt: skip
