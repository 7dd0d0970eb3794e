"""Prints the speed ratios of the benchmark run (medians, same run, same machine)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MEDIANS: dict[tuple[str, str], float] = {}  # (group, implementation) -> median seconds


@pytest.fixture
def record():
    def _record(benchmark, group: str, implementation: str) -> None:
        MEDIANS[(group, implementation)] = benchmark.stats.stats.median
    return _record


def pytest_terminal_summary(terminalreporter) -> None:
    groups = sorted({g for g, _ in MEDIANS})
    if not groups:
        return
    rows = []
    for group in groups:
        times = {impl: t for (g, impl), t in MEDIANS.items() if g == group}
        if {"threepc", "torch", "copy"} <= times.keys():
            rows.append({"group": group, "threepc_ms": 1e3 * times["threepc"], "torch_ms": 1e3 * times["torch"],
                         "copy_ms": 1e3 * times["copy"], "speedup_vs_torch": times["torch"] / times["threepc"],
                         "time_in_copies": times["threepc"] / times["copy"]})
    terminalreporter.section("threepc speed ratios (medians of this run)")
    for r in rows:
        terminalreporter.write_line(
            f"{r['group']:<28} threepc {r['threepc_ms']:9.3f} ms  torch {r['torch_ms']:9.3f} ms  "
            f"copy {r['copy_ms']:8.3f} ms  -> {r['speedup_vs_torch']:6.1f}x faster than torch, "
            f"{r['time_in_copies']:5.2f}x one copy")
    out = Path(".benchmarks") / "ratios.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
