"""Per-step cost of each hook on an unshaped loopback, as a ratio to DDP's own allreduce in the
same run: wall time and CPU time (all threads of the rank's process) per step.

    python -m benchmarks.hook_overhead [--hooks gd ef14 ...] [--workers 2] [--steps 20] [--repeats 3]
    python -m benchmarks.hook_overhead --optimizer adamw --hooks ef14 ef14+opt   # the Adam mode's cost

The model is ``benchmarks.scaling``'s MLP (1.59M parameters; ``--hidden 1920``: 4.69M, the size of
issue 15's model; batch 32 per rank, DDP's default buckets unless ``--bucket-cap-mb``, one thread
per rank). Each repeat runs every method once, in turn, so that a slow
moment of this shared machine hits all of them; the table gives the median over repeats and
the range. Optional ``--profile HOOK`` prints rank 0's cProfile (tottime) for that hook.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import time

import torch
import torch.distributed as dist
from torch import nn

import ddp_hooks
from ddp_hooks.launch import RankFailure, run_ranks

from .accuracy.runner import aware, parse_hook
from .scaling import BATCH, make_model

DEFAULT_HOOKS = ["gd", "ef14", "ef21", "clag", "co3:fmt=fp4-121", "co3_2s:fmt=fp4-121"]


OPTIMIZERS = {"sgd": lambda params: torch.optim.SGD(params, lr=0.01),
              "adamw": lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1)}


def _register(ddp: nn.parallel.DistributedDataParallel, spec: str, opt: torch.optim.Optimizer
              ) -> ddp_hooks.ThreePCState:
    """``NAME[+opt][:KEY=VALUE,...]`` (values as Python literals, as the accuracy suite reads
    them; ``register``'s keywords too, e.g. ``dense_when_faster=True``); ``+opt``: registered with
    the optimizer (``ddp_hooks.adam``)."""
    name, options = parse_hook(spec)
    name, told = aware(name)
    return ddp_hooks.register(ddp, name, optimizer=opt if told else None, **options)


def _measure(rank: int, workers: int, methods: list[str], steps: int, profile: str | None,
             optimizer: str, bucket_cap_mb: float, hidden: int, settle: int) -> dict[str, tuple]:
    torch.set_num_threads(1)
    x, y = torch.randn(BATCH, 512), torch.randint(0, 10, (BATCH,))
    out: dict[str, tuple] = {}
    for method in methods:
        torch.manual_seed(0)
        model = make_model(hidden)
        ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=bucket_cap_mb)
        opt = OPTIMIZERS[optimizer](model.parameters())
        state = _register(ddp, method, opt) if method != "allreduce" else None

        def step() -> None:
            opt.zero_grad()
            nn.functional.cross_entropy(ddp(x), y).backward()
            opt.step()

        for _ in range(settle):  # warm-up, DDP's bucket rebuild, the dense round (dense_when_faster: its probe)
            step()
        dist.barrier()
        profiler = cProfile.Profile() if method == profile and rank == 0 else None
        wall, cpu = time.perf_counter(), time.process_time()
        if profiler:
            profiler.enable()
        for _ in range(steps):
            step()
        if profiler:
            profiler.disable()
        wall, cpu = (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps
        link = getattr(state, "link", None)
        text = ""
        if profiler:
            buffer = io.StringIO()
            pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(20)
            text = buffer.getvalue()
        out[method] = (wall, cpu, text, link.summary() if link is not None else "")
        dist.barrier()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hooks", nargs="+", default=DEFAULT_HOOKS, help="threepc hooks NAME[:KEY=VALUE,...]")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", help="print rank 0's cProfile of this hook")
    parser.add_argument("--optimizer", choices=list(OPTIMIZERS), default="sgd", help="every method's optimizer")
    parser.add_argument("--bucket-cap-mb", type=float, default=25.0, help="DDP's bucket_cap_mb (25: its default)")
    parser.add_argument("--hidden", type=int, default=1024, help="the MLP's hidden width (1920: 4.69M parameters)")
    parser.add_argument("--settle", type=int, default=3,
                        help="untimed steps first (3; dense_when_faster's probe ends after step 9: 12)")
    args = parser.parse_args()
    methods = ["allreduce", *args.hooks]
    runs = []
    for _ in range(args.repeats):
        first = run_ranks(_measure, args.workers, methods, args.steps, args.profile, args.optimizer,
                           args.bucket_cap_mb, args.hidden, args.settle, timeout=600)[0]
        if isinstance(first, RankFailure):
            raise SystemExit(f"rank 0 failed:\n{first.error}")
        runs.append(first)
    print(f"{args.workers} ranks, {args.optimizer}, hidden {args.hidden}, {args.steps} steps, {args.repeats} repeats "
          "(median [min-max]); "
          "ratio = the method's median over allreduce's median")
    print("| method | wall ms / step | ratio | CPU ms / step | ratio |")
    print("|---|---|---|---|---|")
    base = [statistics.median(r[m][i] for r in runs) for i, m in ((0, "allreduce"), (1, "allreduce"))]
    for m in methods:
        wall, cpu = ([r[m][i] * 1e3 for r in runs] for i in (0, 1))
        print(f"| {m} | {statistics.median(wall):.1f} [{min(wall):.1f}-{max(wall):.1f}] | "
              f"{statistics.median(wall) / 1e3 / base[0]:.2f} | {statistics.median(cpu):.1f} "
              f"[{min(cpu):.1f}-{max(cpu):.1f}] | {statistics.median(cpu) / 1e3 / base[1]:.2f} |")
    for m in methods:  # dense_when_faster's choice in each repeat
        if runs[0][m][3]:
            print(f"{m}: " + "; ".join(r[m][3] for r in runs))
    if args.profile:
        print(runs[-1][args.profile][2])


if __name__ == "__main__":
    main()
