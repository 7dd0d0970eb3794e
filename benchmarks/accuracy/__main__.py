"""Accuracy of threepc hooks against DDP's allreduce under users' training recipes.

    python -m benchmarks.accuracy                     # the full suite: 288 runs, about 2 h on 2 cores
    python -m benchmarks.accuracy --quick             # about a minute (CI)
    python -m benchmarks.accuracy --tasks digits_cnn --recipes adamw --hooks allreduce ef21 "co3:fmt=fp4-121"

Writes OUT/accuracy.json (every run: final metric, curve (step, metric, bytes sent), bytes /
dense, wall time), OUT/accuracy.md (mean ± std over seeds, gap to allreduce) and
OUT/accuracy_<task>_n<ranks>.png. Hooks: allreduce, fp16 (torch's fp16_compress_hook), powersgd:rank=R[,start=S]
(torch's PowerSGD hook on one bucket), any
``ddp_hooks`` name with options as NAME:KEY=VALUE,... (e.g. ef21:ratio=0.1), the same name with
``+opt`` (registered with the run's optimizer: ``register(ddp, name, optimizer=opt)``, the
optimizer-aware mode for Adam/AdamW, ``ddp_hooks.adam``; for SGD the named hook, whose momentum
``ef14_mc`` reads from the optimizer), or an
experimental candidate of ``benchmarks.accuracy.experimental``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from .recipes import RECIPES, recipe_named
from .report import markdown, plots, summary
from .runner import AWARE, DEFAULT, Run, check_hook, chunks, execute, hook_names
from .tasks import QUICK, SUITE, TASKS, Task

DEFAULT_HOOKS = ["allreduce", "fp16", "ef21", "ef14", "ef14" + AWARE, DEFAULT, "ef21_sgdm:eta=0.1", "clag",
                 "co3:fmt=fp4-121", "ef21:ratio=0.1"]
QUICK_HOOKS = ["allreduce", DEFAULT]  # register(ddp), which finds opt: SGD ef14 over Top-K, AdamW ef14 over signs
RESULTS = Path(__file__).resolve().parent.parent / "results"


def _recipe(name: str) -> str:
    """``name`` if ``recipe_named`` knows it (argparse's error otherwise)."""
    try:
        recipe_named(name)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=f"hook names: {', '.join(hook_names())}")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), help=f"default: {' '.join(SUITE)} (the others are held out: no default was chosen on them)")
    parser.add_argument("--recipes", nargs="+", type=_recipe, metavar="RECIPE[*S]",
                        help=f"default: sgdm adamw; one of {', '.join(RECIPES)}; NAME*S: at S times its learning rate")
    parser.add_argument("--hooks", nargs="+", metavar="HOOK[:KEY=VALUE,...]",
                        help=f"default: {' '.join(DEFAULT_HOOKS)} (allreduce is always added: the baseline)")
    parser.add_argument("--ranks", nargs="+", type=int, help="default: 2 4")
    parser.add_argument("--seeds", nargs="+", type=int, help="default: 0 1 2")
    parser.add_argument("--steps", type=float, default=1.0, help="multiply every task's steps and eval interval")
    parser.add_argument("--quick", action="store_true",
                        help="short LM and digits (a9a as in the full run), sgdm and adamw, allreduce and the "
                             f"default hook ({DEFAULT}: register(ddp), which finds the optimizer), 2 ranks, seed 0 (about a minute)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--resume", action="store_true", help="keep OUT/accuracy.json's runs; run only the others")
    parser.add_argument("--chunk", type=int, help="runs per spawn of the ranks (default: 8; --quick: all)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.recipes = args.recipes or ["sgdm", "adamw"]
    args.hooks = args.hooks or (QUICK_HOOKS if quick else DEFAULT_HOOKS)
    if "allreduce" not in args.hooks:
        args.hooks.insert(0, "allreduce")
    args.ranks = args.ranks or ([2] if quick else [2, 4])
    args.seeds = args.seeds if args.seeds is not None else ([0] if quick else [0, 1, 2])
    args.tasks = args.tasks or list(SUITE)
    args.chunk = args.chunk or (1 << 30 if quick else 8)
    for spec in args.hooks:
        try:
            check_hook(spec)
        except ValueError as e:
            parser.error(f"--hooks {spec}: {e}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "accuracy.json"
    runs: list[dict[str, object]] = json.loads(path.read_text())["runs"] if args.resume and path.exists() else []
    done = {(r["task_config"], r["recipe"], r["hook"], r["ranks"], r["seed"]) for r in runs}
    todo: dict[int, list[tuple[Task, Run]]] = {ranks: [] for ranks in args.ranks}
    for name in args.tasks:
        task = dataclasses.replace(TASKS[name], **(QUICK.get(name, {}) if args.quick else {}))
        task = dataclasses.replace(task, steps=round(task.steps * args.steps),
                                   eval_every=max(1, round(task.eval_every * args.steps)))
        for ranks in args.ranks:
            todo[ranks] += [(task, Run(recipe, hook, seed)) for recipe in args.recipes for seed in args.seeds
                            for hook in args.hooks if (repr(task), recipe, hook, ranks, seed) not in done]
    plan = [(ranks, chunk) for ranks, items in todo.items() for chunk in chunks(items, args.chunk)]
    total, t0, finished, data = sum(len(r) for _, chunk in plan for _, r in chunk), time.time(), 0, {}
    print(f"{total} runs ({len(runs)} kept from {path})" if args.resume else f"{total} runs", flush=True)
    for ranks, chunk in plan:
        data = {task.name: data[task.name] if task.name in data else task.load() for task, _ in chunk}  # this chunk's
        work = [(task, data[task.name], chunk_runs) for task, chunk_runs in chunk]
        runs.extend(execute(work, ranks, (finished, total, t0)))
        finished += sum(len(r) for _, r in chunk)
        write(args.out, runs, vars(args))
    if not plan and runs:  # nothing left to run (--resume): render the kept runs again
        write(args.out, runs, vars(args))
    print(markdown(summary(runs)))


def write(out: Path, runs: list[dict[str, object]], config: dict[str, object]) -> None:
    """accuracy.json, accuracy.md and the PNGs for ``runs`` (rewritten after every chunk)."""
    rows = summary(runs)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in config.items()}
    (out / "accuracy.json").write_text(json.dumps({"config": config, "summary": rows, "runs": runs}, indent=1))
    (out / "accuracy.md").write_text(markdown(rows))
    plots(runs, out)


if __name__ == "__main__":
    main()
