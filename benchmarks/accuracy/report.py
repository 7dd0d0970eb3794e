"""Aggregate runs over seeds: the markdown table and the PNG curves."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from .runner import BASELINE

Record = dict[str, object]
Key = tuple[str, str, int, str]  # task, recipe, ranks, hook


def group(runs: list[Record]) -> dict[Key, list[Record]]:
    """Runs by (task, recipe, ranks, hook), in first-seen order."""
    groups: dict[Key, list[Record]] = defaultdict(list)
    for r in runs:
        groups[(r["task"], r["recipe"], r["ranks"], r["hook"])].append(r)
    return groups


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _finite(rs: list[Record]) -> list[float]:
    """Final metrics of the runs that did not diverge (a NaN or infinite loss)."""
    return [r["final"] for r in rs if np.isfinite(r["final"])]


def summary(runs: list[Record]) -> list[dict[str, object]]:
    """One row per (task, recipe, ranks, hook), sorted by task, recipe and ranks: mean ± std of
    the final metric over the seeds that did not diverge, the gap to allreduce (positive = worse
    than allreduce, in the metric's units, and relative to allreduce), bytes / dense."""
    groups = group(runs)
    order = {name: i for i, name in enumerate(dict.fromkeys(x for k in groups for x in k[:2]))}
    rows = []
    for (task, recipe, ranks, hook), rs in sorted(groups.items(), key=lambda g: (order[g[0][0]], order[g[0][1]],
                                                                                   g[0][2])):
        finite, base = _finite(rs), _finite(groups.get((task, recipe, ranks, BASELINE), []))
        mean, std = _mean_std(finite) if finite else (float("nan"), float("nan"))
        gap, relative = None, None
        if finite and base:
            base_mean = _mean_std(base)[0]
            gap = (base_mean - mean) if rs[0]["higher_is_better"] else (mean - base_mean)
            relative = gap / abs(base_mean)
        rows.append({"task": task, "recipe": recipe, "ranks": ranks, "hook": hook, "metric": rs[0]["metric"],
                     "seeds": sorted(r["seed"] for r in rs), "diverged": len(rs) - len(finite), "mean": mean,
                     "std": std, "gap": gap, "gap_relative": relative,
                     "fraction_of_dense": float(np.mean([r["fraction_of_dense"] for r in rs])),
                     "wall_s": float(np.mean([r["wall_s"] for r in rs])),
                     "train_s": float(np.mean([r["train_s"] for r in rs]))})
    return rows


def markdown(rows: list[dict[str, object]]) -> str:
    lines = ["| task | metric | recipe | ranks | hook | seeds | mean ± std | gap to allreduce (relative) | "
             "bytes / dense | wall s (train s) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gap = "" if r["gap"] is None else f"{r['gap']:+.4f} ({r['gap_relative']:+.1%})"
        seeds = f"{len(r['seeds'])}" + (f" ({r['diverged']} diverged)" if r["diverged"] else "")
        value = "diverged" if r["diverged"] == len(r["seeds"]) else f"{r['mean']:.4f} ± {r['std']:.4f}"
        lines.append(f"| {r['task']} | {r['metric']} | {r['recipe']} | {r['ranks']} | {r['hook']} | {seeds} | "
                     f"{value} | {gap} | {r['fraction_of_dense']:.2%} | {r['wall_s']:.1f} ({r['train_s']:.1f}) |")
    return "\n".join(lines) + "\n\nGap: how much worse than allreduce, in the metric's units (accuracy as a " \
                              "fraction, or nats per byte of validation loss); negative = better. Mean ± std over " \
                              "the seeds that did not diverge (NaN loss).\n"


def plots(runs: list[Record], out: Path) -> list[Path]:
    """Per (task, ranks): metric vs step (top row) and vs bytes sent per rank (bottom row),
    one column per recipe, mean over the seeds that did not diverge; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = group(runs)
    hooks = list(dict.fromkeys(k[3] for k in groups))
    written = []
    for task, ranks in dict.fromkeys((k[0], k[2]) for k in groups):
        recipes = list(dict.fromkeys(k[1] for k in groups if k[0] == task and k[2] == ranks))
        first = next(rs[0] for k, rs in groups.items() if k[0] == task)
        metric, higher, start = first["metric"], first["higher_is_better"], first["curve"][0][1]
        fig, axes = plt.subplots(2, len(recipes), figsize=(5 * len(recipes), 7), squeeze=False)
        for col, recipe in enumerate(recipes):
            for (t, rc, n, hook), rs in groups.items():
                if (t, rc, n) != (task, recipe, ranks):
                    continue
                finite = [r["curve"] for r in rs if np.isfinite(r["final"])]
                if not finite:
                    continue
                mean = np.asarray(finite, dtype=float).mean(0)  # evals x (step, metric, bytes)
                color = plt.cm.tab20(hooks.index(hook) % 20)  # one color per hook in every panel
                axes[0, col].plot(mean[:, 0], mean[:, 1], label=hook, color=color)
                axes[1, col].plot(mean[1:, 2], mean[1:, 1], label=hook, color=color)
            axes[0, col].set(title=f"{task} {recipe} n={ranks}", xlabel="step", ylabel=metric)
            axes[1, col].set(xlabel="bytes sent per rank", ylabel=metric, xscale="log")
            axes[0, col].legend(fontsize=7)
            if not higher:  # a loss: keep runs that blew up before diverging from flattening the rest
                for ax in axes[:, col]:
                    ax.set_ylim(top=start * 1.05)
        fig.tight_layout()
        path = out / f"accuracy_{task}_n{ranks}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
