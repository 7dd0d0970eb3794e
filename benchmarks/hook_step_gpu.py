"""Per-step cost of the DDP communication hooks on a transformer (one GPU, NCCL, world size 1).

A 12-layer transformer encoder (d 768, 12 heads, FFN 3072, 1000-token tied embedding: 85.8M
parameters), AdamW, batch 16 x 256 tokens. Per hook, from the same initial weights: the mean
training step (forward, backward with the hook, optimizer step) over ``--steps`` steps after
``--warmup`` untimed ones, timed with CUDA events; printed as JSON with the overhead over no hook.
With one rank the collectives are local copies, so the overhead is the hook's own work.

    python -m benchmarks.hook_step_gpu                       # on a GPU
    python -m benchmarks.hook_step_gpu --smoke --device cpu  # a tiny model on gloo (a check)
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import fp16_compress_hook
from torch.nn.parallel import DistributedDataParallel

import ddp_hooks

HOOKS = ["none", "fp16_compress", "default", "ef21", "ef14", "clag", "co3"]


@dataclass(frozen=True)
class Size:
    layers: int = 12
    d: int = 768
    heads: int = 12
    vocab: int = 1000
    batch: int = 16
    tokens: int = 256


SMOKE = Size(layers=2, d=64, heads=4, vocab=100, batch=4, tokens=16)


class Encoder(nn.Module):
    def __init__(self, size: Size) -> None:
        super().__init__()
        self.embed = nn.Embedding(size.vocab, size.d)
        layer = nn.TransformerEncoderLayer(size.d, size.heads, 4 * size.d, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, size.layers, enable_nested_tensor=False)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.encoder(self.embed(tokens)) @ self.embed.weight.T  # tied output layer


def register(ddp: DistributedDataParallel, hook: str) -> ddp_hooks.ThreePCState | None:
    if hook == "fp16_compress":
        ddp.register_comm_hook(None, fp16_compress_hook)
    elif hook == "default":  # the SGD default: register(ddp) would find this run's AdamW and take its Adam mode
        return ddp_hooks.register(ddp, optimizer=None)
    elif hook != "none":
        return ddp_hooks.register(ddp, hook)
    return None


def timer(device: torch.device) -> Callable[[Callable[[], None]], float]:
    """Milliseconds one call of ``fn`` takes on ``device`` (CUDA events; wall clock on the CPU)."""
    def cuda(fn: Callable[[], None]) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    def cpu(fn: Callable[[], None]) -> float:
        t = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - t)

    return cuda if device.type == "cuda" else cpu


def run(hook: str, size: Size, device: torch.device, steps: int, warmup: int) -> dict[str, object]:
    torch.manual_seed(0)
    model = Encoder(size).to(device)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    state = register(ddp, hook)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-4)
    g = torch.Generator(device=device).manual_seed(1)
    tokens = torch.randint(0, size.vocab, (size.batch, size.tokens), generator=g, device=device)
    targets = torch.randint(0, size.vocab, (size.batch, size.tokens), generator=g, device=device)

    def step() -> None:
        loss = nn.functional.cross_entropy(ddp(tokens).flatten(0, 1), targets.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    measure = timer(device)
    for _ in range(warmup):
        measure(step)
    times = [measure(step) for _ in range(steps)]
    result: dict[str, object] = {"hook": hook, "step_ms": sum(times) / len(times), "min_step_ms": min(times)}
    if state is not None:
        result["fraction_of_dense"] = state.stats.summary()["fraction_of_dense"]
    return result


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="a tiny model, 2 timed steps (checks the script)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--hooks", nargs="+", default=HOOKS, choices=HOOKS)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        torch.cuda.set_device(device)
    size, steps, warmup = (SMOKE, 2, 1) if args.smoke else (Size(), args.steps, args.warmup)
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                store=dist.FileStore(str(Path(tmp) / "store"), 1), rank=0, world_size=1)
        try:
            params = sum(p.numel() for p in Encoder(size).parameters())
            results = [run(hook, size, device, steps, warmup) for hook in args.hooks]
        finally:
            dist.destroy_process_group()
    base = next((r["step_ms"] for r in results if r["hook"] == "none"), None)
    for r in results:
        if base:
            r["overhead_vs_none"] = r["step_ms"] / base - 1
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "parameters": params, "size": vars(size), "steps": steps,
              "warmup": warmup, "results": results}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return results


if __name__ == "__main__":
    main()
