"""Lazy aggregation in DDP: bytes sent per rank and skip rates of LAG, CLAG and SASG against
EF21 at equal final accuracy (the README's lazy tables).

    python -m benchmarks.lazy_table [--workers 4] [--part all|demo|logistic]

1. The demo MLP on a9a (minibatches of 64 per rank, SGD lr 0.1, several buckets), 3 epochs,
   test accuracy every 16 steps: the bytes each rank had sent (headers and padding included)
   when the test accuracy first reached the target (default 0.83), as a fraction of what dense
   fp32 allreduce sends in as many steps, and over the whole run: final accuracy, skip rate
   (rounds in which a rank sent no payload).
2. Logistic regression on all 32,561 a9a training rows, full batch (``ddp_hooks.harness``),
   300 DDP steps: the bytes each rank had sent when ||grad f||^2 first fell below the target
   (default 1e-10), the fraction of dense, and the skip rate and rounds in which no rank sent
   anything (no payload collective ran).
"""
from __future__ import annotations

import argparse
import time
from functools import partial

from benchmarks.progress import report
from ddp_hooks.testbed import TrainConfig, load_a9a, train
from ddp_hooks.harness import problem, run_ddp
from compressors.mechanisms.registry import build

DEMO = {
    "EF21 (Top-K 1%)": ("ef21", {"ratio": 0.01}),
    "CLAG (Top-K 1%, ζ = 1)": ("clag", {"ratio": 0.01, "zeta": 1.0}),
    "CLAG (Top-K 1%, ζ = 4)": ("clag", {"ratio": 0.01, "zeta": 4.0}),
    "LAG (ζ = 1)": ("lag", {"zeta": 1.0}),
    "SASG hook-only (Top-K 1%)": ("sasg", {"ratio": 0.01}),
    "SASG exact (Top-K 1%)": ("sasg", {"ratio": 0.01, "exact": True}),
}
K = 6  # of d = 123, about 5%
LOGISTIC = {  # factories must pickle (they travel to the spawned ranks)
    "EF21 (Top-6)": (partial(build, "ef21", k=K), 0.5),
    "CLAG (Top-6, ζ = 4)": (partial(build, "clag", k=K, zeta=4.0), 0.5),
    "LAG (ζ = 4)": (partial(build, "lag", zeta=4.0), 1.0),
    "LAG-WK (ξ = 1)": (partial(build, "lagwk", xi=1.0), 1.0),
    "SASG (Top-6, c = 10)": (partial(build, "sasg", k=K), 0.5),
}
ROWS, STEPS, EPOCHS, EVAL_EVERY = 32_561, 300, 3, 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--part", choices=["all", "demo", "logistic"], default="all")
    parser.add_argument("--accuracy", type=float, default=0.83, help="the demo's target test accuracy")
    parser.add_argument("--grad-norm", type=float, default=1e-10, help="the logistic target ||grad f||^2")
    args = parser.parse_args()
    if args.part != "logistic":
        demo_table(args.workers, args.accuracy)
    if args.part != "demo":
        logistic_table(args.workers, args.grad_norm)


def demo_table(workers: int, target: float) -> None:
    data = load_a9a()
    print(f"demo MLP, {workers} ranks, {EPOCHS} epochs, test accuracy every {EVAL_EVERY} steps, target {target}")
    print("| hook | steps to target | bytes / dense to target | final accuracy | bytes / dense, whole run | "
          "skip rate |")
    print("|---|---|---|---|---|---|")
    started = time.time()
    for i, (name, (hook, options)) in enumerate(DEMO.items()):
        report(i, len(DEMO), started, name)
        r = train(TrainConfig(hook=hook, options=options, workers=workers, epochs=EPOCHS, eval_every=EVAL_EVERY),
                  data)[0]
        dense_per_step = r["history"][-1]["bytes_dense"] / r["steps"]
        hit = next((e for e in r["evals"] if e["test_accuracy"] >= target), None)
        reached = (f"{hit['step']} | {hit['bytes_sent'] / (dense_per_step * hit['step']):.2%}" if hit else
                   f"not reached (best {max(e['test_accuracy'] for e in r['evals']):.4f}) | –")
        print(f"| {name} | {reached} | {r['final_accuracy']:.4f} | {r['stats']['fraction_of_dense']:.2%} | "
              f"{r['stats']['skip_rate']:.1%} |", flush=True)


def logistic_table(workers: int, target: float) -> None:
    prob = problem(workers, ROWS)
    ranks = run_ddp(workers, LOGISTIC, rows=ROWS, steps=STEPS, reproducible=False)
    print(f"\nlogistic a9a, full batch, {workers} ranks, {STEPS} steps, target ||grad f||^2 <= {target:g}")
    print("| mechanism | steps to target | bytes per rank to target | bytes / dense to target | "
          "final ‖∇f‖² | skip rate | rounds with no payload |")
    print("|---|---|---|---|---|---|---|")
    dense_per_step = prob.dim * 4
    for name in LOGISTIC:
        norms = [float(prob.worker_grads(x).mean(0).square().sum()) for x in ranks[0][name]["iterates"]]
        stats = [r[name]["stats"] for r in ranks]
        skip = sum(s["skip_rate"] for s in stats) / len(stats)
        step = next((t for t, v in enumerate(norms) if v <= target), None)
        if step is None:
            reached = f"not reached (best {min(norms):.2e}) | – | –"
        else:
            sent = sum(r[name]["total_sent"][step] for r in ranks) / len(ranks)
            reached = f"{step} | {sent:,.0f} | {sent / (dense_per_step * step):.2%}"
        print(f"| {name} | {reached} | {norms[-1]:.2e} | {skip:.1%} | {stats[0]['skipped_rounds']} |", flush=True)


if __name__ == "__main__":
    main()
