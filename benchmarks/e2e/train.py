"""One timed run on n gloo ranks: (workload, ranks, rate, method).

Rank 0 records the metric against training wall time (evaluation excluded), the loopback
bytes of the training steps (between two barriers) and the compute time of a step: the median
of a few forward+backward passes under ``ddp.no_sync()`` (no communication), timed before
training on separate minibatches. The rest of a step (communication, compression, the
optimizer) is ``step_s - compute_s``.
"""
from __future__ import annotations

import logging
import os
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

from ddp_hooks import launch

from ..accuracy.recipes import RECIPES
from ..accuracy.tasks import Data, Task
from . import methods

COMPUTE_WARMUP, COMPUTE_REPEATS = 2, 5


def compute_seconds(ddp: nn.parallel.DistributedDataParallel, task: Task, data: Data, rank: int,
                    workers: int) -> float:
    """Median forward+backward time under ``no_sync`` (after warm-up passes); grads cleared."""
    gen, times = torch.Generator().manual_seed(10_000 + rank), []
    with ddp.no_sync():
        for _ in range(COMPUTE_WARMUP + COMPUTE_REPEATS):
            x, y = task.batch(data, rank, workers, gen)
            start = time.perf_counter()
            task.loss(ddp, x, y).backward()
            times.append(time.perf_counter() - start)
    ddp.zero_grad(set_to_none=True)
    return statistics.median(times[COMPUTE_WARMUP:])


def train(rank: int, workers: int, task: Task, data: Data, method: str, recipe_name: str,
          count_lo: bool, seed: int = 0) -> dict[str, object]:
    if rank == 0:  # what register(ddp) found and what dense_when_faster chose, in the run's log
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("    %(message)s"))
        logging.getLogger("threepc").addHandler(handler)
        logging.getLogger("threepc").setLevel(logging.INFO)
    torch.manual_seed(seed)
    model = task.model()
    ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=task.bucket_cap_mb)
    synced = [0]
    recipe = RECIPES[recipe_name]
    params = list(ddp.parameters())
    opt, schedule = recipe.optimizer(params, task.base_lr(recipe.family), task.steps)
    counter = methods.register(ddp, method, workers, synced, opt)
    compute_s = compute_seconds(ddp, task, data, rank, workers)
    gen = torch.Generator().manual_seed(1000 * seed + rank)
    curve: list[tuple[int, float, float]] = []  # (step, train seconds, metric)

    def record(step: int, seconds: float) -> None:
        if rank == 0:
            model.eval()
            curve.append((step, seconds, task.evaluate(model, data)))
            model.train()
            if step:
                left = seconds / step * (task.steps - step)
                print(f"    step {step}/{task.steps}: {task.metric} {curve[-1][2]:.4f}, {seconds:.1f} s, "
                      f"run ETA {left:.0f} s", file=sys.stderr, flush=True)

    record(0, 0.0)
    dist.barrier()
    lo_before = launch.loopback_tx_bytes() if count_lo else 0
    train_s = 0.0
    for step in range(1, task.steps + 1):
        start = time.perf_counter()
        x, y = task.batch(data, rank, workers, gen)
        opt.zero_grad(set_to_none=True)
        task.loss(ddp, x, y).backward()
        synced[0] = step
        recipe.clip_gradients(params)
        opt.step()
        schedule.step()
        train_s += time.perf_counter() - start
        if step % task.eval_every == 0 or step == task.steps:
            record(step, train_s)
    dist.barrier()
    lo = launch.loopback_tx_bytes() - lo_before if count_lo else None
    sent, link = counter() if counter else (None, None)
    return {"curve": curve, "final": curve[-1][2] if curve else None, "train_s": train_s,
            "step_s": train_s / task.steps, "compute_s": compute_s, "comm_s": train_s / task.steps - compute_s,
            "bytes_sent": sent, "link_bytes_sent": link, "lo_tx_total": lo,
            "params": sum(p.numel() for p in params)}


@contextmanager
def tee_stderr(keep: int = 20_000) -> Iterator[bytearray]:
    """Pass fd 2 (inherited by the ranks) through a pipe to where it went, keeping its last
    ``keep`` bytes: a rank that aborts (SIGABRT) leaves its reason only there."""
    tail, (read, write), saved = bytearray(), os.pipe(), os.dup(2)

    def pump() -> None:
        while chunk := os.read(read, 65536):
            os.write(saved, chunk)
            tail.extend(chunk)
            del tail[:-keep]

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    sys.stderr.flush()
    os.dup2(write, 2)
    os.close(write)
    try:
        yield tail
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        thread.join(timeout=10)
        os.close(read)
        os.close(saved)


def _reason(stderr: bytearray) -> str:
    """The lines of the ranks' stderr that say why one died (C++ ``what():``, Python errors)."""
    lines = stderr.decode(errors="replace").splitlines()
    return " ".join(line.strip() for line in lines if "what():" in line or "Error" in line)[-1500:]


def run(task: Task, data: Data, workers: int, method: str, recipe: str, count_lo: bool,
        deadline_s: float | None = None, seed: int = 0) -> dict[str, object]:
    """One run on ``workers`` ranks; rank 0's record plus per-rank bytes (hook model: the mean
    over ranks; lo counter: the namespace's total / n). A failure (an abort, an exception, a
    run past ``deadline_s``) is recorded, not raised."""
    started = time.perf_counter()
    with tee_stderr() as stderr:
        try:
            ranks = launch.run_ranks(train, workers, task, data, method, recipe, count_lo, seed, timeout=deadline_s)
            dead = [r for r in ranks if isinstance(r, launch.RankFailure)]
            if dead:
                raise RuntimeError("; ".join(f"rank {r.rank} exited {r.exitcode}: {r.error[-300:]}" for r in dead))
        except Exception as e:  # e.g. a hook that aborts on gloo, or a hang past the deadline: keep its error text
            failed = f"{type(e).__name__}: {str(e).strip()}"
            traceback_text = traceback.format_exc()[-4000:]
        else:
            failed = None
    if failed:
        reason = _reason(stderr)
        return {"error": f"{failed}; rank stderr: {reason}" if reason else failed, "traceback": traceback_text}
    result = dict(ranks[0])
    result["run_s"] = time.perf_counter() - started
    links = [r["link_bytes_sent"] for r in ranks]
    result["model_bytes_per_rank"] = sum(links) / workers if None not in links else None
    result["bytes_sent_per_rank"] = sum(r["bytes_sent"] for r in ranks) / workers if None not in links else None
    result["lo_bytes_per_rank"] = result.pop("lo_tx_total") / workers if count_lo else None
    if result["model_bytes_per_rank"] and result["lo_bytes_per_rank"] is not None:
        result["lo_over_model"] = result["lo_bytes_per_rank"] / result["model_bytes_per_rank"]
    return result
