"""Time to accuracy of DDP communication hooks on n gloo ranks over a shaped loopback.

    python -m benchmarks.e2e --quick          # under a minute: 2 ranks, unshaped, 3 methods, tiny steps
    python -m benchmarks.e2e --rates 400mbit --ranks 2 --workloads digits_mlp --methods allreduce fp16 default
    python -m benchmarks.e2e ... --budget 2   # the other methods may train twice allreduce's steps

Runs inside a private network namespace (re-executes itself under ``unshare -n``; needs root,
unshare, ip and tc, else it says so and runs unshaped), with ``tc qdisc ... tbf rate R burst
256kb latency 400ms`` on lo per rate. Writes OUT/PREFIX.json (every run: curve of (step,
training seconds, metric), s/step split into compute and comm+compress, bytes per rank from the
hook's model and from lo's counter, time to target, speed-up vs allreduce), OUT/PREFIX.md and
OUT/PREFIX_<workload>_n<ranks>.png (metric vs training seconds). The target is allreduce's final
metric (less 1 pp, or its loss plus 1%); with ``--budget F`` every other method trains F times
allreduce's steps (the same batches; a schedule is stretched to its steps), so that a method
that needs more steps than allreduce still has a time to target: what a user waits for. A run
still going after 4 times its group's allreduce run (times the budget) plus 60 s is killed and
recorded as failed (hung collectives).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from ..accuracy.recipes import RECIPES
from ..accuracy.runner import BASELINE
from ..progress import report as progress
from . import methods, netns
from .report import annotate, markdown, plots
from .train import run
from .workloads import QUICK, WORKLOADS

RATES = ["100mbit", "400mbit", "1gbit", netns.UNSHAPED]
# a run may take this many times its group's allreduce run (plus slack) before it is killed as hung
DEADLINE_FACTOR, DEADLINE_SLACK_S = 4, 60
RESULTS = Path(__file__).resolve().parent.parent / "results"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.e2e", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=f"methods: {', '.join(methods.METHODS)}, or any threepc hook "
                                            "NAME[:KEY=VALUE,...] (see ddp_hooks.MECHANISMS)")
    parser.add_argument("--rates", nargs="+", help=f"tc tbf rates or 'unshaped' (default: {' '.join(RATES)})")
    parser.add_argument("--ranks", nargs="+", type=int, help="default: 2 4")
    parser.add_argument("--methods", nargs="+", metavar="METHOD", help=f"default: {' '.join(methods.METHODS)} "
                        "(allreduce is always run first: it sets the target)")
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), help="default: all")
    parser.add_argument("--recipe", choices=list(RECIPES), default="sgdm")
    parser.add_argument("--seed", type=int, default=0, help="model initialisation and batches (default 0)")
    parser.add_argument("--steps", type=float, default=1.0, help="multiply every workload's steps and eval interval")
    parser.add_argument("--budget", type=float, default=1.0,
                        help="every method but allreduce trains this many times allreduce's steps (its schedule "
                             "stretched to them), so that time to target is not capped at allreduce's step count "
                             "(default 1)")
    parser.add_argument("--quick", action="store_true", help="tiny steps, digits_mlp, unshaped, 2 ranks, "
                        f"{' '.join(methods.QUICK_METHODS)}")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--prefix", default="e2e", help="output file names (default: e2e)")
    args = parser.parse_args(argv)
    q = args.quick
    args.rates = args.rates or ([netns.UNSHAPED] if q else RATES)
    args.ranks = args.ranks or ([2] if q else [2, 4])
    args.methods = args.methods or list(methods.QUICK_METHODS if q else methods.METHODS)
    args.methods = [BASELINE] + [m for m in args.methods if m != BASELINE]
    args.workloads = args.workloads or (["digits_mlp"] if q else list(WORKLOADS))
    for spec in args.methods:
        try:
            methods.check(spec)
        except ValueError as e:
            parser.error(f"--methods {spec}: {e}")
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)  # --help and bad choices before any namespace
    netns.reexec(argv)
    isolated = netns.isolated()
    if isolated:
        netns.bring_up_lo()
    rates = args.rates if isolated else [netns.UNSHAPED]
    args.out.mkdir(parents=True, exist_ok=True)
    plan = [(w, n, rate, m) for rate in rates for w in args.workloads for n in args.ranks for m in args.methods]
    runs: list[dict[str, object]] = []
    started, data = time.time(), {}
    for rate in rates:
        with netns.shaped(rate):  # rates is [unshaped] outside a namespace
            for workload, ranks, _, method in [p for p in plan if p[2] == rate]:
                task = dataclasses.replace(WORKLOADS[workload], **(QUICK[workload] if args.quick else {}))
                task = dataclasses.replace(task, steps=max(1, round(task.steps * args.steps)),
                                           eval_every=max(1, round(task.eval_every * args.steps)))
                if method != BASELINE:
                    task = dataclasses.replace(task, steps=max(1, round(task.steps * args.budget)))
                progress(len(runs), len(plan), started, f"{workload} n={ranks} {rate} {methods.label(method, args.recipe)}")
                if workload not in data:
                    data = {workload: task.load()}
                base = next((r for r in runs if (r["workload"], r["ranks"], r["rate"], r["method"]) ==
                             (workload, ranks, rate, BASELINE) and "run_s" in r), None)
                deadline = (DEADLINE_FACTOR * base["run_s"] * max(1.0, args.budget) + DEADLINE_SLACK_S if base
                            else None)
                result = run(task, data[workload], ranks, method, args.recipe, isolated, deadline, args.seed)
                runs.append({"workload": workload, "task_config": repr(task), "metric": task.metric,
                             "higher_is_better": task.higher_is_better, "ranks": ranks, "rate": rate,
                             "steps": task.steps,
                             "method": method, "recipe": args.recipe, "seed": args.seed, **result})
                write(args, runs, isolated)
    progress(len(runs), len(plan), started, "done")
    print(markdown(runs))


def write(args: argparse.Namespace, runs: list[dict[str, object]], isolated: bool) -> None:
    """PREFIX.json, PREFIX.md and the PNGs (rewritten after every run)."""
    annotate(runs)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    out = args.out
    (out / f"{args.prefix}.json").write_text(json.dumps({"config": config, "isolated": isolated, "runs": runs},
                                                        indent=1))
    (out / f"{args.prefix}.md").write_text(markdown(runs))
    plots(runs, out, args.prefix)


if __name__ == "__main__":
    main()
