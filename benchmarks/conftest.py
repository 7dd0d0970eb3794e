"""Prints the speed ratios of the benchmark run (medians, same run, same machine)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MEDIANS: dict[tuple[str, str], float] = {}  # (group, implementation) -> median seconds
PROCESSED: dict[str, int] = {}  # group -> bytes of input one call processes (for MB/s)


@pytest.fixture
def one_thread():
    """The benchmark on one thread (the per-core figures)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def record():
    def _record(benchmark, group: str, implementation: str, processed: int | None = None) -> None:
        MEDIANS[(group, implementation)] = benchmark.stats.stats.median
        if processed is not None:
            PROCESSED[group] = processed
    return _record


def pytest_terminal_summary(terminalreporter) -> None:
    """Per group: threepc's median against torch's (speed-up), against a copy of the same buffer
    (the fraction of copy bandwidth it reaches; also against a copy into a fresh buffer, "clone",
    where measured) and, where recorded, its throughput."""
    groups = sorted({g for g, _ in MEDIANS})
    if not groups:
        return
    rows = []
    for group in groups:
        times = {impl: t for (g, impl), t in MEDIANS.items() if g == group}
        for impl in sorted(i for i in times if i.startswith("threepc")):
            row = {"group": group, "implementation": impl, "threepc_ms": 1e3 * times[impl]}
            if "torch" in times:
                row.update(torch_ms=1e3 * times["torch"], speedup_vs_torch=times["torch"] / times[impl])
            if "copy" in times:
                row.update(copy_ms=1e3 * times["copy"], fraction_of_copy_bandwidth=times["copy"] / times[impl])
            if "clone" in times and impl == "threepc":  # the allocating call against a copy into a fresh buffer
                row.update(clone_ms=1e3 * times["clone"], fraction_of_clone_bandwidth=times["clone"] / times[impl])
            if group in PROCESSED:
                row["mb_per_s"] = PROCESSED[group] / times[impl] / 1e6
            rows.append(row)
    terminalreporter.section("threepc speed ratios (medians of this run)")
    for r in rows:
        line = f"{r['group']:<28} {r['implementation']:<12} {r['threepc_ms']:9.3f} ms"
        if "torch_ms" in r:
            line += f"  torch {r['torch_ms']:9.3f} ms -> {r['speedup_vs_torch']:6.1f}x faster than torch"
        if "copy_ms" in r:
            line += f"  copy {r['copy_ms']:8.3f} ms -> {r['fraction_of_copy_bandwidth']:6.1%} of copy bandwidth"
        if "clone_ms" in r:
            line += f"  clone {r['clone_ms']:8.3f} ms -> {r['fraction_of_clone_bandwidth']:6.1%}"
        if "mb_per_s" in r:
            line += f"  {r['mb_per_s']:8.1f} MB/s"
        terminalreporter.write_line(line)
    out = Path(".benchmarks") / "ratios.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
