"""A small reference DDP training on localhost gloo: an MLP on a9a (LIBSVM; UCI Adult), each
of n ranks holding a contiguous shard of the 32,561 training rows, with a threepc hook, DDP's
default allreduce or torch's fp16 hook. ``make demo`` (benchmarks/demo.py), the benchmark
tables and the DDP tests run it with the DDP variants (no_sync accumulation,
gradient_as_bucket_view, static_graph, find_unused_parameters, fp16/bf16).

    >>> results = train(TrainConfig(workers=2, hook="ef21", epochs=1))   # one dict per rank
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from compressors.sim.datasets import A9A, A9A_TRAIN_ROWS, load_libsvm

from .launch import run_ranks
from .registry import register
from .stale_gradients import StaleGradients
from .state import ThreePCState


@dataclass
class TrainConfig:
    workers: int = 2
    hook: str = "ef21"  # a name in ddp_hooks.MECHANISMS, "allreduce" (DDP's default) or "fp16" (torch's fp16_compress_hook)
    ratio: float = 0.01
    eta: float = 0.1  # ef21_sgdm's momentum weight
    p: float = 0.1  # 3pcv5/marina: probability of a dense round
    options: dict | None = None  # registry options for the hook (default: hook_options(config))
    epochs: int = 3
    batch_size: int = 64  # per rank
    lr: float = 0.1
    momentum: float = 0.0
    hidden: int = 64
    bucket_cap_mb: float = 0.01  # small: several buckets
    warmup_steps: int = 1
    accumulation: int = 1  # micro-batches per step; all but the last run under no_sync()
    gradient_as_bucket_view: bool = False
    static_graph: bool = False
    find_unused_parameters: bool = False
    dtype: str = "float32"
    device: str = "cpu"  # "cuda": every rank on the current GPU (gloo moves CUDA tensors too)
    eval_every: int = 0  # > 0: also record test accuracy and bytes sent every that many steps ("evals")
    seed: int = 0
    verbose: bool = False


class MLP(nn.Module):
    """123 -> hidden -> hidden -> 2; ``unused`` takes no part in forward (find_unused_parameters)."""

    def __init__(self, features: int, hidden: int, with_unused: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                  nn.Linear(hidden, 2))
        self.unused = nn.Linear(hidden, 2) if with_unused else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _estimates_agree(state: ThreePCState, model: nn.Module) -> dict[str, float]:
    """Checks of the mechanism's invariants across ranks, as numbers (0 is perfect)."""
    position = {id(p): i for i, p in enumerate(model.parameters())}  # ids differ between ranks
    worst_replica, worst_mean = 0.0, 0.0
    for bucket in sorted(state.buckets, key=lambda b: position[b.params[0]]):
        g = bucket.estimate
        replicas = [torch.empty_like(g) for _ in range(dist.get_world_size())]
        dist.all_gather(replicas, g)
        worst_replica = max(worst_replica, max((r - g).abs().max().item() for r in replicas))
        if hasattr(bucket.worker.memory, "g_i"):  # EF21: g = (1/n) sum_i g_i
            mean = bucket.worker.memory.g_i.clone()
            dist.all_reduce(mean)
            mean /= dist.get_world_size()
            scale = max(1.0, g.abs().max().item())
            worst_mean = max(worst_mean, (mean - g).abs().max().item() / scale)
    return {"estimate_replica_max_diff": worst_replica, "estimate_vs_mean_g_i": worst_mean}


def hook_options(config: TrainConfig) -> dict[str, object]:
    """The registry options the demo sets for ``config.hook``."""
    if config.hook == "gd":
        return {}
    options: dict[str, object] = {"ratio": config.ratio}
    if config.hook == "ef21_sgdm":
        options["eta"] = config.eta
    if config.hook in ("3pcv5", "marina"):
        options["p"] = config.p
    return options


def _worker(rank: int, workers: int, config: TrainConfig, data: dict[str, np.ndarray]) -> dict:
    dtype = getattr(torch, config.dtype)
    torch.manual_seed(config.seed)
    model = MLP(data["x_train"].shape[1], config.hidden, config.find_unused_parameters).to(config.device, dtype)
    ddp = nn.parallel.DistributedDataParallel(
        model, bucket_cap_mb=config.bucket_cap_mb, gradient_as_bucket_view=config.gradient_as_bucket_view,
        static_graph=config.static_graph, find_unused_parameters=config.find_unused_parameters)
    state = None
    if config.hook == "fp16":
        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
    elif config.hook != "allreduce":
        options = hook_options(config) if config.options is None else config.options
        state = register(ddp, config.hook, warmup_steps=config.warmup_steps, **options)
    opt = torch.optim.SGD(ddp.parameters(), lr=config.lr, momentum=config.momentum)
    stale = None
    if state is not None and getattr(state.mechanism, "exact", False):
        if config.accumulation != 1:
            raise ValueError("SASG's exact rule compares gradients of whole minibatches: use accumulation=1")
        stale = StaleGradients(ddp, state)

    shards = np.array_split(np.arange(len(data["y_train"])), config.workers)
    shard = shards[rank]
    batches_per_epoch = min(len(s) for s in shards) // config.batch_size  # equal on every rank
    x = torch.from_numpy(data["x_train"][shard]).to(config.device, dtype)
    y = torch.from_numpy((data["y_train"][shard] > 0).astype(np.int64)).to(config.device)
    x_test = torch.from_numpy(data["x_test"]).to(config.device, dtype)
    y_test = torch.from_numpy((data["y_test"] > 0).astype(np.int64)).to(config.device)
    gen = torch.Generator().manual_seed(config.seed * 1000 + rank)
    micro = config.batch_size // config.accumulation
    dense_bytes_per_step = sum(p.numel() * p.element_size() for p in ddp.parameters() if p.requires_grad)
    steps, history, evals = 0, [], []

    def sent_so_far() -> int:
        return state.stats.total_sent if state else dense_bytes_per_step * steps // (2 if config.hook == "fp16" else 1)

    started = time.time()
    for epoch in range(config.epochs):
        order = torch.randperm(len(y), generator=gen)
        total, count = 0.0, 0
        for b in range(batches_per_epoch):
            batch = order[b * config.batch_size:(b + 1) * config.batch_size]
            opt.zero_grad()
            for m in range(config.accumulation):
                part = batch[m * micro:(m + 1) * micro]

                def loss_of(net: nn.Module) -> torch.Tensor:
                    return nn.functional.cross_entropy(net(x[part]).float(), y[part]) / config.accumulation
                if stale is not None:  # SASG's exact rule: a backward on the stale model first
                    loss = stale.backward(loss_of)
                elif m < config.accumulation - 1:
                    with ddp.no_sync():
                        (loss := loss_of(ddp)).backward()
                else:
                    (loss := loss_of(ddp)).backward()
                total += loss.item()
            count += 1
            opt.step()
            steps += 1
            if config.eval_every and steps % config.eval_every == 0:
                evals.append({"step": steps, "test_accuracy": _accuracy(model, x_test, y_test),
                              "bytes_sent": sent_so_far()})
        acc = _accuracy(model, x_test, y_test)
        sent = sent_so_far()
        history.append({"epoch": epoch + 1, "loss": total / count, "test_accuracy": acc, "bytes_sent": sent,
                        "bytes_dense": dense_bytes_per_step * steps})
        if rank == 0 and config.verbose:
            left = (time.time() - started) / (epoch + 1) * (config.epochs - epoch - 1)
            print(f"[rank {rank}] [{config.hook} n={config.workers}] epoch {epoch + 1}/{config.epochs} "
                  f"(ETA {left:.0f} s): loss {total / count:.4f}  "
                  f"test accuracy {acc:.4f}  sent {sent / 1e6:.3f} MB/rank = "
                  f"{sent / (dense_bytes_per_step * steps):.2%} of dense ({dense_bytes_per_step * steps / 1e6:.2f} MB)",
                  flush=True)
    params = torch.cat([p.detach().float().reshape(-1) for p in model.parameters()])
    replicas = [torch.empty_like(params) for _ in range(config.workers)]
    dist.all_gather(replicas, params)
    result = {"rank": rank, "steps": steps, "history": history, "evals": evals,
              "final_accuracy": history[-1]["test_accuracy"],
              "params_identical": all(torch.equal(r, params) for r in replicas),
              "stats": state.stats.summary() if state else None,
              "buckets": len(state.buckets) if state else None}
    if state is not None:
        result.update(_estimates_agree(state, model))
    return result


def load_a9a() -> dict[str, np.ndarray]:
    x, y = load_libsvm(A9A, n_features=123)
    return {"x_train": x[:A9A_TRAIN_ROWS], "y_train": y[:A9A_TRAIN_ROWS],
            "x_test": x[A9A_TRAIN_ROWS:], "y_test": y[A9A_TRAIN_ROWS:]}


def train(config: TrainConfig, data: dict[str, np.ndarray] | None = None) -> list[dict]:
    """Run ``config`` on ``config.workers`` gloo processes; one result dict per rank."""
    return run_ranks(_worker, config.workers, config, load_a9a() if data is None else data)


