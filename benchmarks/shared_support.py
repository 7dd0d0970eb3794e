"""How much of each worker's vector a shared support keeps, against its own Top-K, as the
number of workers grows: the measured contraction and the accuracy it costs.

For a contractive C, alpha is the worst case of 1 - ||x - C(x)||^2 / ||x||^2. A shared support
(``SharedTopK``) guarantees only R/d, so this measures the kept share
``kept = ||C(x_i)||^2 / ||x_i||^2`` on the vectors x_i = e_i + grad_i that EF14 really
compresses, per worker and round (mean and 5th percentile), for local Top-K (each worker its
own support, all_gather: link bytes grow with n) and SharedTopK (one support, allreduce: link
bytes flat in n), in a simulation of n workers training the accuracy suite's tasks with the
users' recipes. The simulation runs EF14 per DDP-like bucket (parameters in reverse order,
filled up to the task's ``bucket_cap_mb``), on each worker's own shard of the data, and is the
same arithmetic the hook runs (tests/test_parity.py checks the hook against it bit for bit).

    python -m benchmarks.shared_support                   # digits_cnn and a9a_mlp, n = 2, 4, 8
    python -m benchmarks.shared_support --workers 2 4 --seeds 0 1 --out /tmp/shared

Writes ``<out>/shared_support.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compressors import EF14, SharedTopK, TopK
from compressors.core.compressor import Compressor
from compressors.sim.simulation import Cluster

from .accuracy.recipes import RECIPES
from .accuracy.tasks import TASKS
from .progress import report

RESULTS = Path(__file__).parent / "results"
_DATA: dict[str, dict[str, np.ndarray]] = {}
COMPRESSORS = {"topk 1%": lambda: TopK(0.01), "shared_topk 1%": lambda: SharedTopK(0.01),
               "shared_topk 2%": lambda: SharedTopK(0.02),
               "shared_topk 1% input": lambda: SharedTopK(0.01, propose="input"),  # not in the default run
               "shared_topk 2% input": lambda: SharedTopK(0.02, propose="input")}


def buckets(model: nn.Module, cap_mb: float) -> list[list[nn.Parameter]]:
    """DDP-like buckets: parameters in reverse order, a new bucket once ``cap_mb`` is full."""
    out: list[list[nn.Parameter]] = [[]]
    size = 0
    for p in reversed(list(model.parameters())):
        if out[-1] and size + p.numel() * 4 > cap_mb * 2**20:
            out.append([])
            size = 0
        out[-1].append(p)
        size += p.numel() * 4
    return out


def train(task_name: str, recipe_name: str, make: Callable[[], Compressor], workers: int,
          seed: int) -> dict[str, float]:
    """One simulated run: the final metric and the kept shares of every worker and round."""
    task, recipe = TASKS[task_name], RECIPES[recipe_name]
    data = _DATA[task_name] = _DATA.get(task_name) or task.load()
    torch.manual_seed(seed)
    model = task.model()
    params = list(model.parameters())
    opt, schedule = recipe.optimizer(params, task.base_lr(recipe.family), task.steps)
    groups = buckets(model, task.bucket_cap_mb)
    clusters = [Cluster(EF14(make()), workers) for _ in groups]
    gens = [torch.Generator().manual_seed(seed * 1000 + r) for r in range(workers)]
    kept: list[float] = []
    for step in range(task.steps):
        grads: list[list[torch.Tensor]] = [[] for _ in groups]
        for r in range(workers):
            x, y = task.batch(data, r, workers, gens[r])
            model.zero_grad(set_to_none=True)
            task.loss(model, x, y).backward()
            for j, group in enumerate(groups):
                grads[j].append(torch.cat([p.grad.reshape(-1) for p in group]))
        for group, cluster, g in zip(groups, clusters, grads):
            if step == 0:
                cluster.init(g)
            else:
                before = [w.memory.e_i + gi for w, gi in zip(cluster.workers, g)]
                cluster.step(g)
                kept += [1.0 - float(w.memory.e_i.square().sum() / v.square().sum().clamp_min(1e-30))
                         for w, v in zip(cluster.workers, before)]
            for p, part in zip(group, cluster.g.split([p.numel() for p in group])):
                p.grad = part.view_as(p).clone()
        recipe.clip_gradients(params)
        opt.step()
        schedule.step()
    model.eval()
    return {"final": task.evaluate(model, data), "kept_mean": float(np.mean(kept)),
            "kept_p5": float(np.percentile(kept, 5))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["digits_cnn", "a9a_mlp"], choices=sorted(TASKS))
    parser.add_argument("--recipes", nargs="+", default=["sgdm", "adamw"], choices=sorted(RECIPES))
    parser.add_argument("--workers", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument("--compressors", nargs="+", default=list(COMPRESSORS)[:3], choices=list(COMPRESSORS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    grid = [(t, r, n, c, s) for t in args.tasks for r in args.recipes for n in args.workers
            for c in args.compressors for s in args.seeds]
    runs, start = [], time.time()
    for i, (t, r, n, c, s) in enumerate(grid, 1):
        out = train(t, r, COMPRESSORS[c], n, s)
        runs.append({"task": t, "recipe": r, "workers": n, "compressor": c, "seed": s, **out})
        report(i, len(grid), start, f"{t} {r} n={n} {c} seed {s}: {TASKS[t].metric} {out['final']:.4f}, "
               f"kept {out['kept_mean']:.3f} (p5 {out['kept_p5']:.3f})")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shared_support.json").write_text(json.dumps(runs, indent=1))
    lines = ["| task | recipe | n | compressor | metric (mean ± std) | kept share, mean | kept share, p5 |",
             "|---|---|---|---|---|---|---|"]
    for t, r, n, c in dict.fromkeys((x["task"], x["recipe"], x["workers"], x["compressor"]) for x in runs):
        cell = [x for x in runs if (x["task"], x["recipe"], x["workers"], x["compressor"]) == (t, r, n, c)]
        final = np.array([x["final"] for x in cell])
        lines.append(f"| {t} | {r} | {n} | {c} | {final.mean():.4f} ± {final.std():.4f} | "
                     f"{np.mean([x['kept_mean'] for x in cell]):.3f} | {np.mean([x['kept_p5'] for x in cell]):.3f} |")
    (args.out / "shared_support.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
