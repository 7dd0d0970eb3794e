"""Every hook of ``ddp_hooks.MECHANISMS`` on the demo model (the README's hooks table).

    python -m benchmarks.hooks_table [--workers 2] [--epochs 3]

Each row trains the demo MLP on a9a (plain SGD, lr 0.1, batch 64 per rank, Top-K/Rand-K 1%,
dense-round probability p = 0.05) with the same seed and data order, and prints the final test
accuracy, its gap to DDP's allreduce, and the bytes each rank sent as a fraction of dense.
MARINA is also run full-batch (one 16,280-row batch per rank and step, 30 steps, lr 0.1), its
design point, and compared by training loss.
"""
from __future__ import annotations

import time

from benchmarks.progress import report
from benchmarks.demo import table_baseline
from ddp_hooks.testbed import TrainConfig, train

MINIBATCH = {
    "ef21": {"ratio": 0.01}, "ef21_sgdm": {"ratio": 0.01, "eta": 0.1}, "ef21plus": {"ratio": 0.01},
    "ef14": {"ratio": 0.01}, "3pcv2": {"ratio": 0.01}, "3pcv4": {"ratio": 0.01},
    "3pcv5": {"ratio": 0.01, "p": 0.05}, "marina": {"ratio": 0.01, "p": 0.05}, "gd": {},
}
FULL_BATCH = {"marina (Rand-K 25%, p 0.2)": {"ratio": 0.25, "p": 0.2}, "marina (Perm-K, p 0.2)": {"q": "permk", "p": 0.2}}


def main() -> None:
    data, base, dense = table_baseline(__doc__.split("\n\n")[0])
    print(f"allreduce: test accuracy {dense['final_accuracy']:.4f}")
    print("| hook | options | test accuracy | gap (pp) | bytes / dense |")
    print("|---|---|---|---|---|")
    started = time.time()
    for i, (hook, options) in enumerate(MINIBATCH.items()):
        report(i, len(MINIBATCH), started, hook)
        lr = 1.0 if hook == "ef21_sgdm" else 0.1  # eta = 0.1: lr / eta keeps the step of heavy-ball 0.9
        r = train(TrainConfig(hook=hook, options=options, **{**base, "lr": lr}), data)[0]
        acc = r["final_accuracy"]
        print(f"| {hook} | {options} | {acc:.4f} | {100 * (dense['final_accuracy'] - acc):+.2f} | "
              f"{r['stats']['fraction_of_dense']:.2%} |", flush=True)
    full = dict(workers=base["workers"], epochs=30, batch_size=16_280, lr=0.1)
    reference = train(TrainConfig(hook="allreduce", **full), data)[0]["history"][-1]["loss"]
    print(f"\nfull batch, 30 steps: allreduce training loss {reference:.4f}")
    print("| hook | training loss | bytes / dense |")
    print("|---|---|---|")
    for name, options in FULL_BATCH.items():
        r = train(TrainConfig(hook="marina", options=options, **full), data)[0]
        print(f"| {name} | {r['history'][-1]['loss']:.4f} | {r['stats']['fraction_of_dense']:.2%} |", flush=True)


if __name__ == "__main__":
    main()
