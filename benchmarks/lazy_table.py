"""Lazy aggregation in DDP: bytes sent per rank and skip rates of LAG, CLAG and SASG against
EF21 (the README's lazy table).

    python -m benchmarks.lazy_table [--workers 4]

1. The demo MLP on a9a (minibatches of 64 per rank, SGD lr 0.1, 1 epoch, several buckets):
   test accuracy, bytes per rank as a fraction of dense (headers and padding included) and the
   skip rate (rounds in which a rank sent no payload).
2. Logistic regression on all 32,561 a9a training rows, full batch (``benchmarks.logistic_ddp``):
   200 DDP steps; final ||grad f||^2, bytes per rank, skip rate, and the rounds in which no rank
   sent anything (no payload collective ran).
"""
from __future__ import annotations

import argparse
from functools import partial

from benchmarks.demo import TrainConfig, load_a9a, train
from benchmarks.logistic_ddp import problem, run_ddp
from compressors import CLAG, EF21, LAG, LAGWK, SASG, TopK

DEMO = {
    "EF21 (Top-K 1%)": ("ef21", {"ratio": 0.01}),
    "CLAG (Top-K 1%, zeta 1)": ("clag", {"ratio": 0.01, "zeta": 1.0}),
    "CLAG (Top-K 1%, zeta 4)": ("clag", {"ratio": 0.01, "zeta": 4.0}),
    "LAG (zeta 1)": ("lag", {"zeta": 1.0}),
    "SASG hook-only (Top-K 1%)": ("sasg", {"ratio": 0.01}),
    "SASG exact (Top-K 1%)": ("sasg", {"ratio": 0.01, "exact": True}),
}
K = 6  # of d = 123, about 5%
LOGISTIC = {  # factories must pickle (they travel to the spawned ranks)
    "EF21 (Top-6)": (partial(EF21, TopK(k=K)), 0.5),
    "CLAG (Top-6, zeta 4)": (partial(CLAG, TopK(k=K), zeta=4.0), 0.5),
    "LAG (zeta 4)": (partial(LAG, zeta=4.0), 1.0),
    "LAG-WK (xi 1)": (partial(LAGWK, xi=1.0), 1.0),
    "SASG (Top-6, c 10)": (partial(SASG, TopK(k=K)), 0.5),
}
ROWS, STEPS = 32_561, 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--part", choices=["all", "demo", "logistic"], default="all")
    args = parser.parse_args()
    if args.part != "logistic":
        demo_table(args.workers)
    if args.part != "demo":
        logistic_table(args.workers)


def demo_table(workers: int) -> None:
    data = load_a9a()
    print(f"demo MLP, {workers} ranks, 1 epoch")
    print("| hook | test accuracy | bytes / dense | skip rate (rank 0) |")
    print("|---|---|---|---|")
    for name, (hook, options) in DEMO.items():
        r = train(TrainConfig(hook=hook, options=options, workers=workers, epochs=1), data)[0]
        print(f"| {name} | {r['final_accuracy']:.4f} | {r['stats']['fraction_of_dense']:.2%} | "
              f"{r['stats']['skip_rate']:.1%} |", flush=True)


def logistic_table(workers: int) -> None:
    prob = problem(workers, ROWS)
    ranks = run_ddp(workers, LOGISTIC, rows=ROWS, steps=STEPS, reproducible=False)
    print(f"\nlogistic a9a, full batch, {workers} ranks, {STEPS} steps")
    print("| mechanism | final grad norm^2 | bytes per rank | bytes / dense | skip rate | rounds with no payload |")
    print("|---|---|---|---|---|---|")
    dense = STEPS * prob.dim * 4
    for name in LOGISTIC:
        x = ranks[0][name]["iterates"][-1]
        norm = float(prob.worker_grads(x).mean(0).square().sum())
        sent = sum(sum(r[name]["sent"].values()) for r in ranks) / len(ranks)
        stats = [r[name]["stats"] for r in ranks]
        skip = sum(s["skip_rate"] for s in stats) / len(stats)
        print(f"| {name} | {norm:.2e} | {sent:,.0f} | {sent / dense:.2%} | {skip:.1%} | "
              f"{stats[0]['skipped_rounds']} |", flush=True)


if __name__ == "__main__":
    main()
