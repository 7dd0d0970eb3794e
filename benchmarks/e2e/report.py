"""Targets, time to target, the markdown table and the time-to-accuracy PNGs."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ..accuracy.runner import BASELINE
from .methods import label

Record = dict[str, object]
ACCURACY_TOLERANCE = 0.01  # target: allreduce's final accuracy minus 1 pp
LOSS_TOLERANCE = 0.01  # target: allreduce's final loss plus 1 %


def target(baseline: Record) -> float | None:
    """The metric a run must reach: allreduce's final metric less the tolerance."""
    final = baseline.get("final")
    if final is None:
        return None
    return final - ACCURACY_TOLERANCE if baseline["higher_is_better"] else final * (1 + LOSS_TOLERANCE)


def time_to(curve: list[list[float]], goal: float, higher_is_better: bool) -> float | None:
    """Training seconds at the first evaluation meeting ``goal`` (None: never)."""
    for _, seconds, metric in curve:
        if (metric >= goal) if higher_is_better else (metric <= goal):
            return seconds
    return None


def group_key(r: Record) -> tuple[str, int, str]:
    return r["workload"], r["ranks"], r["rate"]


def annotate(runs: list[Record]) -> None:
    """Add target, time_to_target and speedup (allreduce's time to target / this run's)."""
    base = {group_key(r): r for r in runs if r["method"] == BASELINE and "error" not in r}
    for r in runs:
        b = base.get(group_key(r))
        goal = target(b) if b else None
        r["target"] = goal
        r["time_to_target_s"] = time_to(r["curve"], goal, r["higher_is_better"]) if goal is not None and "curve" in r \
            else None
        t_base = time_to(b["curve"], goal, b["higher_is_better"]) if goal is not None else None
        t = r["time_to_target_s"]
        r["speedup"] = t_base / t if t_base is not None and t else None


def _f(value: object, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def markdown(runs: list[Record]) -> str:
    lines = ["| workload | n | rate | method | steps | s/step | compute s | comm+compress s | time to target s "
             "| speed-up | final | target | MB/rank (hook model) | MB/rank (lo) | lo / model |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        head = f"| {r['workload']} | {r['ranks']} | {r['rate']} | {label(r['method'], r['recipe'])} |"
        if "error" in r:
            lines.append(f"{head} {r.get('steps', '')} | failed: {' '.join(r['error'].split())[:400]} |" + " |" * 9)
            continue
        mb = lambda v: _f(None if v is None else v / 1e6, ".2f")  # noqa: E731
        lines.append(f"{head} {r.get('steps', '')} | {r['step_s']:.3f} | {r['compute_s']:.3f} | {r['comm_s']:.3f} | "
                     f"{_f(r['time_to_target_s'], '.1f') or 'not reached'} | {_f(r['speedup'], '.2f')} | "
                     f"{r['final']:.4f} | {_f(r['target'], '.4f')} | {mb(r['model_bytes_per_rank'])} | "
                     f"{mb(r['lo_bytes_per_rank'])} | {_f(r.get('lo_over_model'), '.3f')} |")
    return "\n".join(lines) + (
        "\n\nTarget: fp32 allreduce's final metric minus 1 pp (accuracy) or plus 1 % (loss), after its steps; a "
        "method's final metric is after its own (`--budget` times allreduce's). Times are training "
        "seconds of rank 0 (evaluation excluded). compute = forward+backward under no_sync; comm+compress = the "
        "rest of the step (communication, compression, optimizer). Bytes per rank over the training steps: the "
        "hook's ring model (link_bytes_sent; dense hooks from the parameter sizes) and the private namespace's lo "
        "tx counter / n (TCP/IP headers included). The rate shapes lo, which all n ranks share: R is the ranks' "
        "aggregate bandwidth (a shared medium), not a per-rank link.\n")


def plots(runs: list[Record], out: Path, prefix: str = "e2e") -> list[Path]:
    """One PNG per (workload, ranks): metric vs training seconds, one panel per rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures: dict[tuple[str, int], dict[str, list[Record]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        if "curve" in r:
            figures[r["workload"], r["ranks"]][r["rate"]].append(r)
    written = []
    for (workload, ranks), by_rate in figures.items():
        fig, axes = plt.subplots(1, len(by_rate), figsize=(5 * len(by_rate), 4), squeeze=False)
        for ax, (rate, rs) in zip(axes[0], by_rate.items()):
            for r in rs:
                ax.plot([c[1] for c in r["curve"]], [c[2] for c in r["curve"]], marker=".", label=label(r["method"], r["recipe"]))
            if rs[0].get("target") is not None:
                ax.axhline(rs[0]["target"], color="grey", linestyle="--", linewidth=0.8, label="target")
            ax.set(title=f"{workload}, n={ranks}, {rate}", xlabel="training seconds", ylabel=rs[0]["metric"])
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{prefix}_{workload}_n{ranks}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
