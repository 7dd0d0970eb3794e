"""``register(ddp)`` without ``optimizer=`` looks for the optimizer (``ddp_hooks.optimizer_lookup``):
an Adam or AdamW built before or after ``register`` gives the run ``register(ddp, optimizer=opt)``
gives, bit for bit (a resume too); what the mode cannot take is warned about and left untold."""
from __future__ import annotations

import gc
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import ddp_hooks
from ddp_hooks.launch import run_ranks
from ddp_hooks.optimizer_lookup import adam_of, holding

STEPS = 6


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))


def test_the_lookup_finds_the_one_adam_and_warns_when_the_mode_cannot_take_it():
    model, other = _model(), nn.Linear(3, 3)
    assert adam_of(model) is None, "no optimizer yet"
    foreign = torch.optim.AdamW(other.parameters())  # another model's: not looked at
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert adam_of(model) is None, "an SGD: the default is the same hook told or not"
    del sgd
    adamw = torch.optim.AdamW(model.parameters())
    assert adam_of(model) is adamw
    second = torch.optim.Adam(model[0].parameters())
    with pytest.warns(RuntimeWarning, match="2 optimizers hold the model's parameters"):
        assert adam_of(model) is None
    del second
    cycle = torch.optim.AdamW(model.parameters())
    cycle.me = cycle  # dropped in a reference cycle: collected before a second look
    del cycle
    assert adam_of(model) is adamw
    del adamw
    gc.collect()
    coupled = torch.optim.Adam(model.parameters(), weight_decay=0.1)
    with pytest.warns(RuntimeWarning, match="weight decay decoupled"):
        assert adam_of(model) is None
    assert holding(model) == [coupled] and holding(other) == [foreign]


def test_a_wrapped_optimizer_is_found_as_the_optimizer_inside():
    model = _model()
    adamw = torch.optim.AdamW(model.parameters())

    class Wrapper(torch.optim.Optimizer):  # as Accelerate's AcceleratedOptimizer: .optimizer, its param_groups
        def __init__(self, optimizer: torch.optim.Optimizer) -> None:
            self.optimizer = optimizer

        @property
        def param_groups(self) -> list[dict]:
            return self.optimizer.param_groups

    wrapper = Wrapper(adamw)
    assert holding(model) == [adamw] and adam_of(model) is adamw
    del wrapper


def _train(rank: int, workers: int, order: str, steps: int, save: str | None, load: str | None) -> torch.Tensor:
    """``steps`` AdamW steps of a 3-bucket MLP, the hook registered in ``order``; ``save``/``load``:
    a checkpoint prefix to write after / resume from before (each rank its own file)."""
    model = _model()
    if load:
        ckpt = torch.load(f"{load}.{rank}.pt", weights_only=False)
        model.load_state_dict(ckpt["model"])
    ddp = DDP(model, bucket_cap_mb=0.005)
    if order == "told":
        opt = torch.optim.AdamW(ddp.parameters(), lr=1e-2, weight_decay=0.1)
        state = ddp_hooks.register(ddp, optimizer=opt)
    elif order == "before":
        opt = torch.optim.AdamW(ddp.parameters(), lr=1e-2, weight_decay=0.1)
        state = ddp_hooks.register(ddp)
    else:  # "after" and "untold": the optimizer built after register
        state = ddp_hooks.register(ddp, optimizer=None) if order == "untold" else ddp_hooks.register(ddp)
        opt = torch.optim.AdamW(ddp.parameters(), lr=1e-2, weight_decay=0.1)
    if load:
        opt.load_state_dict(ckpt["opt"])
        state.load_state_dict(ckpt["hook"])
    for _ in range(steps):
        gen = torch.Generator().manual_seed(rank * 1000 + state.iteration)  # the same batches when resumed
        x, y = torch.randn(32, 20, generator=gen), torch.randint(0, 4, (32,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        nn.utils.clip_grad_norm_(ddp.parameters(), 0.5)  # the mode follows it: its state rides in opt's checkpoint
        opt.step()
    if save:
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "hook": state.state_dict()},
                   f"{save}.{rank}.pt")
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    everyone = [torch.empty_like(flat) for _ in range(workers)]
    dist.all_gather(everyone, flat)
    assert all(torch.equal(flat, f) for f in everyone), "replicas differ"
    return flat


def test_register_without_optimizer_runs_the_adam_mode_of_an_adamw_built_before_or_after_it():
    told, before, after, untold = (run_ranks(_train, 2, order, STEPS, None, None, timeout=120)[0]
                                   for order in ("told", "before", "after", "untold"))
    assert torch.equal(before, told) and torch.equal(after, told)
    assert not torch.equal(untold, told), "optimizer=None: raw gradients, the SGD default's compressor"


def test_a_resume_with_the_optimizer_built_after_register_is_bit_for_bit(tmp_path: Path):
    whole = run_ranks(_train, 2, "after", STEPS, None, None, timeout=120)[0]
    run_ranks(_train, 2, "after", STEPS // 2, str(tmp_path / "ckpt"), None, timeout=120)
    resumed = run_ranks(_train, 2, "after", STEPS - STEPS // 2, None, str(tmp_path / "ckpt"), timeout=120)[0]
    assert torch.equal(resumed, whole)


def test_an_optimizer_that_is_not_one_raises(tmp_path: Path):
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match="optimizer= takes the training's optimizer, None or 'auto'"):
            ddp_hooks.register(DDP(_model()), optimizer="adamw")
    finally:
        dist.destroy_process_group()
