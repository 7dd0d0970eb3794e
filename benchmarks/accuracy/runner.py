"""Training runs on localhost gloo ranks: one run = (task, recipe, hook, ranks, seed).

Runs of one rank count go to the ranks in chunks of a few runs, of one task or of several (one
start of the ranks per chunk, each task's data pickled once per chunk: a start imports the
suite's modules and joins a gloo group); every run builds a fresh model from ``torch.manual_seed(seed)``,
so all hooks of one seed start from the same weights and see the same minibatches. Rank 0
evaluates the metric every ``task.eval_every`` steps and prints a progress line with an ETA.
"""
from __future__ import annotations

import ast
import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

import ddp_hooks
from ddp_hooks.launch import run_ranks

from ..progress import eta_line
from .recipes import recipe_named
from .tasks import Data, Task

BASELINE = "allreduce"
AWARE = "+opt"  # a threepc hook name with this suffix is registered with the run's optimizer (ddp_hooks.adam)
DENSE_WHEN_FASTER = "dense_when_faster"  # register()'s keyword, which a spec may give (ddp_hooks.link_choice)
DEFAULT = "default"  # register(ddp): what a user gets with no name (it finds opt; momentum SGD: ef14_mc topk8 5%; Adam: signs)
POWERSGD = "powersgd"  # torch's PowerSGD hook, the anchor torch ships (options rank=, start=)
ONE_BUCKET_MB = 1024.0  # PowerSGD's bucket cap: one bucket (see powersgd)


def parse_hook(spec: str) -> tuple[str, dict[str, object]]:
    """``"co3:fmt=fp4-121,gamma=1.0"`` -> ("co3", {"fmt": "fp4-121", "gamma": 1.0})."""
    name, _, rest = spec.partition(":")
    options: dict[str, object] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"hook option {item!r} of {spec!r} is not KEY=VALUE")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value  # a plain string such as fp4-121
    return name, options


def aware(name: str) -> tuple[str, bool]:
    """``"ef14+opt"`` -> ("ef14", True): register(ddp, "ef14", optimizer=opt)."""
    return (name[:-len(AWARE)], True) if name.endswith(AWARE) else (name, False)


def hook_names() -> list[str]:
    from .experimental import EXPERIMENTAL

    return [BASELINE, "fp16", DEFAULT, POWERSGD, *sorted(ddp_hooks.MECHANISMS), *sorted(EXPERIMENTAL)]


def powersgd(ddp: nn.parallel.DistributedDataParallel, rank: int = 1, start: int = 2) -> powerSGD_hook.PowerSGDState:
    """Register torch's PowerSGD hook (Vogels et al. 2019, Alg. 1: rank-``rank`` P = MQ and Q = M^T P
    allreduced, error feedback, warm start) after ``start`` > 1 plain allreduce iterations (torch's
    default, 1000, is past these runs' end); tensors it would not shrink 2x travel dense. Its
    collectives are issued from Future callbacks, which hang or mismatch on gloo once a model has
    several buckets (pytorch #58467): the suite gives it one bucket (``ONE_BUCKET_MB``)."""
    state = powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=rank,
                                        start_powerSGD_iter=start)
    ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
    return state


def check_hook(spec: str) -> None:
    """Raise ValueError for an unknown name or options the hook does not take (before spawning)."""
    from .experimental import EXPERIMENTAL

    name, options = parse_hook(spec)
    name, optimizer = aware(name)
    if optimizer and (name in (BASELINE, "fp16", DEFAULT) or name in EXPERIMENTAL):
        raise ValueError(f"{AWARE} applies to the library's hooks ({', '.join(ddp_hooks.MECHANISMS)}), not {name}")
    if name == POWERSGD:
        if optimizer or not set(options) <= {"rank", "start"} or \
                not all(type(v) is int and v > 0 for v in options.values()) or options.get("start", 2) < 2:
            raise ValueError(f"{spec!r}: powersgd takes rank=R >= 1 and start=S >= 2 (integers), and no {AWARE}")
    elif name in (BASELINE, "fp16"):
        if options:
            raise ValueError(f"{name} takes no options")
    elif name in EXPERIMENTAL:
        EXPERIMENTAL[name].check(**options)
    else:
        fast = options.pop(DENSE_WHEN_FASTER, False)
        if not isinstance(fast, bool) or (name == DEFAULT and options):
            raise ValueError(f"{spec!r}: {DEFAULT} takes {DENSE_WHEN_FASTER}=True or False only, and every threepc "
                             f"hook takes {DENSE_WHEN_FASTER}=True or False")
        if name != DEFAULT:
            ddp_hooks.mechanism(name, **options)


@dataclass(frozen=True)
class Run:
    recipe: str
    hook: str  # a spec for parse_hook
    seed: int


def _register(ddp: nn.parallel.DistributedDataParallel, spec: str, opt: torch.optim.Optimizer
              ) -> Callable[[], int] | None:
    """Register ``spec`` on ``ddp`` (``opt``: the run's optimizer, for ``AWARE`` specs); returns a function giving this rank's bytes sent so far
    (None for the dense hooks, whose bytes are counted from the parameter sizes)."""
    from .experimental import EXPERIMENTAL

    name, options = parse_hook(spec)
    if name == BASELINE:
        return None
    if name == "fp16":
        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
        return None
    if name == DEFAULT:  # as a user writes it: the registration finds ``opt`` (ddp_hooks.optimizer_lookup)
        state = ddp_hooks.register(ddp, **options)  # dense_when_faster only (check_hook)
        return lambda: state.stats.total_sent
    if name == POWERSGD:  # what it allreduces: P, Q and the tensors it sends dense (fp32), after its plain iterations
        low_rank = powersgd(ddp, **options)
        dense = sum(p.numel() * p.element_size() for p in ddp.parameters())
        return lambda: 4 * low_rank.total_numel_after_compression + dense * min(low_rank.iter, low_rank.start_powerSGD_iter)
    name, optimizer = aware(name)
    if getattr(EXPERIMENTAL.get(name), "wants_optimizer", False):
        options["optimizer"] = opt
    state = EXPERIMENTAL[name].register(ddp, **options) if name in EXPERIMENTAL else \
        ddp_hooks.register(ddp, name, optimizer=opt if optimizer else None, **options)
    return lambda: state.stats.total_sent


def _train(rank: int, workers: int, task: Task, data: Data, run: Run) -> dict[str, object]:
    torch.manual_seed(run.seed)
    model = task.model()
    one_bucket = parse_hook(run.hook)[0] == POWERSGD
    ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=ONE_BUCKET_MB if one_bucket else task.bucket_cap_mb)
    recipe = recipe_named(run.recipe)
    params = list(ddp.parameters())
    opt, schedule = recipe.optimizer(params, task.base_lr(recipe.family), task.steps)
    sent = _register(ddp, run.hook, opt)
    dense_per_step = sum(p.numel() * p.element_size() for p in params)
    per_step = dense_per_step // 2 if parse_hook(run.hook)[0] == "fp16" else dense_per_step
    gen = torch.Generator().manual_seed(run.seed * 1000 + rank)
    curve: list[tuple[int, float, int]] = []
    eval_s = 0.0

    def record(step: int) -> None:
        nonlocal eval_s
        if rank == 0:
            t = time.perf_counter()
            model.eval()
            curve.append((step, task.evaluate(model, data), sent() if sent else per_step * step))
            model.train()
            eval_s += time.perf_counter() - t

    start = time.perf_counter()
    record(0)
    for step in range(1, task.steps + 1):
        x, y = task.batch(data, rank, workers, gen)
        opt.zero_grad(set_to_none=True)
        task.loss(ddp, x, y).backward()
        recipe.clip_gradients(params)
        opt.step()
        schedule.step()
        if step % task.eval_every == 0 or step == task.steps:
            record(step)
    wall = time.perf_counter() - start
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    replicas = [torch.empty_like(flat) for _ in range(workers)]
    dist.all_gather(replicas, flat)
    bytes_sent = sent() if sent else per_step * task.steps
    return {"final": curve[-1][1] if curve else None, "curve": curve, "bytes_sent": bytes_sent,
            "bytes_dense": dense_per_step * task.steps, "fraction_of_dense": bytes_sent / (dense_per_step * task.steps),
            "wall_s": wall, "train_s": wall - eval_s, "params": flat.numel(),
            "replicas_identical": all(torch.equal(r, flat) for r in replicas)}


Work = list[tuple[Task, Data, list[Run]]]  # one spawn's runs, task by task


def _rank_main(rank: int, workers: int, work: Work, progress: tuple[int, int, float]) -> list[dict[str, object]]:
    done, total, t0 = progress
    results = []
    for task, data, runs in work:
        for run in runs:
            result = _train(rank, workers, task, data, run)
            results.append(result)
            done += 1
            if rank == 0:
                print(f"[rank 0] {eta_line(done, total, t0)}: {task.name} n={workers} {run.recipe} {run.hook} "
                      f"seed {run.seed}: {task.metric} {result['final']:.4f}, {result['fraction_of_dense']:.2%} of dense, "
                      f"{result['wall_s']:.1f} s", flush=True)
    return results


def chunks(runs: list[tuple[Task, Run]], size: int) -> Iterator[list[tuple[Task, list[Run]]]]:
    """``runs`` (in order) in chunks of at most ``size``, each grouped by task."""
    for i in range(0, len(runs), size):
        grouped: list[tuple[Task, list[Run]]] = []
        for task, run in runs[i:i + size]:
            if not grouped or grouped[-1][0] is not task:
                grouped.append((task, []))
            grouped[-1][1].append(run)
        yield grouped


def execute(work: Work, workers: int, progress: tuple[int, int, float]) -> list[dict[str, object]]:
    """``work`` on ``workers`` ranks in one spawn; one record per run (rank 0's, which has the curve)."""
    results = iter(run_ranks(_rank_main, workers, work, progress)[0])
    return [{"task": task.name, "task_config": repr(task), "metric": task.metric, "chance": task.chance,
             "higher_is_better": task.higher_is_better, "ranks": workers, **dataclasses.asdict(run), **next(results)}
            for task, _, runs in work for run in runs]
