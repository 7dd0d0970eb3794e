"""Accuracy and bytes of the EF21 hook against dense allreduce on a9a (the README's table).

    python -m benchmarks.accuracy_table [--epochs 3] [--workers 2 4] [--momentum 0 0.9]

Each row trains the demo MLP with the same seed and data order three times: DDP's default
allreduce and the EF21 hook (Top-K, ratio 0.01), both under SGD with heavy-ball momentum beta,
and EF21-SGDM with eta = 1 - beta under plain SGD with lr / (1 - beta), which is the same update
as heavy-ball beta when nothing is compressed. It prints final test accuracies, the gaps to
allreduce, and the hooks' bytes sent per rank as a fraction of dense.
"""
from __future__ import annotations

import argparse
import time

from benchmarks.progress import report
from ddp_hooks.testbed import TrainConfig, load_a9a, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--momentum", type=float, nargs="+", default=[0.0, 0.9])
    parser.add_argument("--ratio", type=float, default=0.01)
    args = parser.parse_args()
    data = load_a9a()
    print("| ranks | momentum | allreduce | EF21 | gap (pp) | EF21-SGDM | gap (pp) | bytes / dense |")
    print("|---|---|---|---|---|---|---|---|")
    started, total = time.time(), len(args.workers) * len(args.momentum)
    for workers in args.workers:
        for beta in args.momentum:
            report(args.workers.index(workers) * len(args.momentum) + args.momentum.index(beta), total, started,
                   f"{workers} ranks, momentum {beta}")
            config = dict(workers=workers, epochs=args.epochs, ratio=args.ratio)
            dense = train(TrainConfig(hook="allreduce", lr=0.1, momentum=beta, **config), data)[0]
            ef21 = train(TrainConfig(hook="ef21", lr=0.1, momentum=beta, **config), data)[0]
            sgdm = train(TrainConfig(hook="ef21_sgdm", eta=1 - beta, lr=0.1 / (1 - beta), momentum=0.0, **config),
                         data)[0] if beta > 0 else None
            base = dense["final_accuracy"]
            row = f"| {workers} | {beta} | {base:.4f} | {ef21['final_accuracy']:.4f} | " \
                  f"{100 * (base - ef21['final_accuracy']):+.2f} | "
            row += f"{sgdm['final_accuracy']:.4f} | {100 * (base - sgdm['final_accuracy']):+.2f} | " if sgdm \
                else "(= EF21 at beta = 0) | | "
            row += f"{ef21['stats']['fraction_of_dense']:.2%} |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
