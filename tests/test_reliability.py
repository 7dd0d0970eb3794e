"""Chaos suite: real gloo ranks meet non-finite gradients, failing ranks, ranks configured
differently, diverged replicas, odd buckets, subgroups and a restart; every scenario ends with
its documented outcome within a bounded time (``run_ranks(..., timeout=...)``: a hang fails).

Few spawns, many scenarios each (module fixtures); every rank reports an outcome per scenario:
"ok" or the exception's type and message, with the seconds from the start of the failing step.
"""
from __future__ import annotations

import copy
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import ddp_hooks
from ddp_hooks import MECHANISMS, protocol, wire
from ddp_hooks.launch import RankFailure, run_ranks

pytestmark = pytest.mark.slow

CAP = 0.01  # MB: the MLP below spreads over several buckets


def _model(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)).to(dtype)


def _loss(ddp: nn.Module, rank: int, step: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * rank + step)
    x = torch.randn(16, 20, generator=g).to(dtype)
    return ((ddp(x) - x[:, :1]) ** 2).mean()


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _memory(state: ddp_hooks.ThreePCState) -> dict[str, dict[str, torch.Tensor]]:
    return state.state_dict()["memory"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k][f], b[k][f]) for k in a for f in a[k])


def _outcome(step: Callable[[], object]) -> tuple[str, float]:
    """("ok" or "Type: message", seconds) of one step."""
    start = time.monotonic()
    try:
        step()
        return "ok", time.monotonic() - start
    except Exception as e:  # noqa: BLE001 - the scenario reports whatever the rank saw
        return f"{type(e).__name__}: {e}", time.monotonic() - start


def _poison(param: nn.Parameter) -> dict:
    """A switch: while ``switch["value"]`` is not None, the first element of ``param``'s gradient
    is set to it (before DDP sees the gradient)."""
    switch: dict = {"value": None}

    def hook(g: torch.Tensor) -> torch.Tensor:
        if switch["value"] is None:
            return g
        g = g.clone()
        g.view(-1)[0] = switch["value"]
        return g

    param.register_hook(hook)
    return switch


# -- spawn 1: 2 or 4 ranks in one group, one scenario after the other ---------------------------------------
# label ("<registry name>[ <variant>]") -> options
NONFINITE_HOOKS = {"gd": {}, "ef21": {"ratio": 0.05}, "ef21_sgdm": {"ratio": 0.05}, "sasg": {"ratio": 0.05},
                   "clag": {"ratio": 0.05}, "co3": {}, "ef14": {"ratio": 0.05}, "3pcv5": {"ratio": 0.05, "p": 0.5},
                   "ef14 shared_topk": {"ratio": 0.05, "compressor": "shared_topk"}, "co3_2s": {},
                   "co3_2s fp4": {"fmt": "fp4-121"}, "onebit": {}, "ef14 sign": {"compressor": "sign"},
                   "ef21plus": {"ratio": 0.05}, "ef14_mc": {"compressor": "topk8", "ratio": 0.05}}


def _nonfinite_propagates(rank: int, hook: str, options: dict) -> dict:
    """One NaN in rank 1's gradient at step 3 under GradScaler: the step is skipped, nothing else."""
    model = _model()
    ddp = DDP(model, bucket_cap_mb=CAP)
    state = ddp_hooks.register(ddp, hook.split()[0], check_every=1, **options)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    switch = _poison(model[2].weight)
    out: dict = {}
    for step in range(6):
        switch["value"] = float("nan") if step == 3 and rank == 1 else None
        before, params, scale = _memory(state), _params(model), scaler.get_scale()
        opt.zero_grad()
        scaler.scale(_loss(ddp, rank, step)).backward()
        scaler.step(opt)
        scaler.update()
        if step == 3:
            out.update(memory_untouched=_same(before, _memory(state)),
                       step_skipped=all(torch.equal(a, b) for a, b in zip(params, _params(model))),
                       scale=(scale, scaler.get_scale()), nonfinite_rounds=state.stats.nonfinite_rounds)
    out.update(params=_params(model), finite=all(bool(p.isfinite().all()) for p in model.parameters()))
    return out


NO_OP_HOOKS = {"ef14": {"ratio": 0.05}, "ef14 topk8": {"compressor": "topk8", "ratio": 0.05},
               "ef21": {"ratio": 0.05}, "ef21plus": {"ratio": 0.05},
               "ef14_mc": {"compressor": "topk8", "ratio": 0.05}}  # rounds that do not depend on the iteration's number


def _skip_is_a_no_op(rank: int, hook: str, options: dict) -> bool:
    """Rounds rolled back (a NaN on rank 1 at steps 3 and 4, then three more steps) leave the hook
    and the model where a run that never had those steps is, bit for bit: each rollback restores
    every memory, and the buffers later rounds reuse (the error and aggregate of the round before
    last) are never the restored ones."""
    ends = []
    for poisoned in (True, False):
        model = _model()
        ddp = DDP(model, bucket_cap_mb=CAP)
        state = ddp_hooks.register(ddp, hook.split()[0], **options)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
        switch = _poison(model[2].weight)
        for step in range(8):
            if step in (3, 4) and not poisoned:
                scaler.update(scaler.get_scale() / 2)  # what the skipped step did to the scale
                continue
            switch["value"] = float("nan") if step in (3, 4) and rank == 1 else None
            opt.zero_grad()
            scaler.scale(_loss(ddp, rank, step)).backward()
            scaler.step(opt)
            scaler.update()
        ends.append((_params(model), _memory(state)))
    (params, memory), (params_b, memory_b) = ends
    return all(torch.equal(a, b) for a, b in zip(params, params_b)) and _same(memory, memory_b)


def _nonfinite_raises(rank: int) -> dict:
    """nonfinite="raise": every rank raises naming the parameters; training then goes on."""
    model = _model()
    ddp = DDP(model, bucket_cap_mb=CAP)
    state = ddp_hooks.register(ddp, "ef21", ratio=0.05, nonfinite="raise", check_every=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    switch = _poison(model[2].weight)

    def before_step(step: int) -> None:
        switch["value"] = float("nan") if step == 3 and rank == 1 else None
    return _train_through_failures(model, ddp, state, opt, rank, before_step)


def _hook_error(rank: int) -> dict:
    """The mechanism raises on rank 1 at step 3: every rank raises, memories roll back."""
    model = _model()
    ddp = DDP(model, bucket_cap_mb=CAP)
    state = ddp_hooks.register(ddp, "ef21", ratio=0.05, check_every=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def boom(*args: object) -> None:
        raise RuntimeError("injected failure")

    def before_step(step: int) -> None:
        if rank == 1:
            for b in state.buckets:
                if step == 3:
                    b.worker.step = boom
                else:
                    b.worker.__dict__.pop("step", None)
    return _train_through_failures(model, ddp, state, opt, rank, before_step)


def _decode_error(rank: int, hook: str, method: str, at: int, nan: bool = False) -> dict:
    """The mechanism's ``method`` (a decoding step, run after the round's collectives) raises on
    rank 1 alone at step ``at`` (an out-of-memory error, say): the other ranks keep that round,
    so from the next step on every rank raises, without a hang, until every rank loads the
    checkpoint it saved before the failure; then they train again, replicas identical. With
    ``nan``, rank 0's gradient is NaN in that step: every rank refuses the iteration, so nothing
    differs and training goes on (a non-finite step is skipped, as GradScaler would)."""
    model = _model()
    ddp = DDP(model, bucket_cap_mb=CAP)
    state = ddp_hooks.register(ddp, hook, ratio=0.05) if hook == "ef21" else ddp_hooks.register(ddp, hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    real, saved, outcomes, refused_save = getattr(type(state.mechanism), method), None, [], ""
    switch = _poison(model[2].weight)

    def fail(*args: object) -> None:
        raise MemoryError("injected allocation failure")
    for step in range(7):
        setattr(type(state.mechanism), method, fail if rank == 1 and step == at else real)
        switch["value"] = float("nan") if nan and rank == 0 and step == at else None
        if step == at:
            saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(), "hook": state.state_dict()})
        if step == at + 1:
            refused_save = _outcome(state.state_dict)[0]  # the failing rank's diverged state is not saved
        if step == at + 3:  # every rank restores its own checkpoint
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["opt"])
            state.load_state_dict(saved["hook"])
        opt.zero_grad()
        outcome = _outcome(lambda: _loss(ddp, rank, step).backward())
        if outcome[0] == "ok" and all(bool(p.grad.isfinite().all()) for p in model.parameters()):
            opt.step()
        outcomes.append(outcome[0])
    setattr(type(state.mechanism), method, real)
    return {"outcomes": outcomes, "last_error": type(state.last_error).__name__, "params": _params(model),
            "save after": refused_save}


def _spec_mismatch(rank: int, hook: str, method: str) -> dict:
    """A mechanism whose ``method`` (step, or the two-stage owner's relay) returns fp64 values
    where its spec declares fp32, on rank 1 at step 3: every rank raises, no rank is left in a
    collective, training goes on."""
    model = _model()
    ddp = DDP(model, bucket_cap_mb=CAP)
    state = ddp_hooks.register(ddp, hook, check_every=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def wrong(worker: object) -> Callable:
        right = getattr(type(worker), method)

        def call(*args: object) -> object:
            payload = right(worker, *args)
            return type(payload)({k: v.double() if v.is_floating_point() else v for k, v in payload.parts.items()},
                                 payload.numel)
        return call

    def before_step(step: int) -> None:
        for b in state.buckets:
            b.worker.__dict__.pop(method, None)
            if rank == 1 and step == 3:
                setattr(b.worker, method, wrong(b.worker))
    return _train_through_failures(model, ddp, state, opt, rank, before_step)


# label -> (registry name, options, the protocol's work that raises (WORK), and which of its calls in
# rank 1's step 3 (in the hook's thread; "owner": the first second-stage pack, after the n
# first-stage chunks)); one per way a protocol carries flags
PACK_ERRORS = {"ef21": ("ef21", {"ratio": 0.05}, "pack", 0),  # all_gather, the flags inside the payload
               "ef14 shared_topk": ("ef14", {"ratio": 0.05, "compressor": "shared_topk"}, "pack", 0),  # averaged
               "gd": ("gd", {}, "mean", 0),  # one averaged part, the flags in an all_reduce of their own
               "co3": ("co3", {}, "pack", 0),  # the size header
               "onebit": ("onebit", {}, "pack", 0), "onebit owner": ("onebit", {}, "pack", "owner"),  # fixed size
               "co3_2s owner": ("co3_2s", {}, "pack", "owner"),  # two stages, variable size: the width header
               "onebit slots": ("onebit", {}, "slots", 0),  # building the first stage's slots
               "onebit unpack": ("onebit", {}, "unpack", 0),  # an owner unpacking its chunk between the stages
               "co3_2s unpack": ("co3_2s", {}, "unpack", 0)}
WORK = {"pack": (wire, "pack"), "mean": (protocol, "averaged"), "slots": (protocol, "_framed"),
        "unpack": (wire, "unpack")}


def _pack_error(rank: int, hook: str, options: dict, work: str, call: int | str) -> dict:
    """The protocol's own work on a payload (packing it, averaging a copy) raises on rank 1 at
    step 3, an allocation failure say: every rank raises, none is left in a collective, memories
    untouched, training goes on."""
    model = _model()
    ddp = DDP(model, bucket_cap_mb=CAP)
    state = ddp_hooks.register(ddp, hook, check_every=1, **options)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    module, name = WORK[work]
    real, left = getattr(module, name), [None]

    def failing(*args: object) -> object:
        if left[0] is not None and threading.current_thread() is threading.main_thread():  # not a decoding callback
            left[0] -= 1
            if left[0] < 0:
                left[0] = None
                raise MemoryError("injected allocation failure in the protocol")
        return real(*args)

    def before_step(step: int) -> None:
        left[0] = (state.group.size() if call == "owner" else call) if rank == 1 and step == 3 else None
    setattr(module, name, failing)
    try:
        return _train_through_failures(model, ddp, state, opt, rank, before_step)
    finally:
        setattr(module, name, real)


def _train_through_failures(model: nn.Module, ddp: DDP, state: ddp_hooks.ThreePCState, opt: torch.optim.Optimizer,
                            rank: int, before_step: Callable[[int], None]) -> dict:
    """Six steps; a step whose backward raises is recorded (step, outcome, memory untouched) and
    skipped, the others train."""
    outcomes, kept = [], []
    for step in range(6):
        before_step(step)
        before = _memory(state)
        opt.zero_grad()
        outcome = _outcome(lambda: _loss(ddp, rank, step).backward())
        if outcome[0] == "ok":
            opt.step()
        else:
            outcomes.append((step, *outcome, _same(before, _memory(state))))
            first = str(state.last_error).split(", in the bucket")[0]
            kept.append((type(state.last_error).__name__, first in outcome[0]))
    return {"failures": outcomes, "last_errors": kept, "params": _params(model)}


def _overflow(rank: int, dtype: torch.dtype) -> dict:
    """Low-precision gradients that overflow on rank 1 at step 2 (an inf in the bucket), and
    finite fp32 gradients whose EF21 difference x - g_i overflows inside the compressed values."""
    model = _model(dtype)
    ddp = DDP(model, bucket_cap_mb=CAP)
    state = ddp_hooks.register(ddp, "ef21", ratio=0.05, check_every=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    out: dict = {"skipped": []}
    for step in range(5):
        before = _memory(state)
        opt.zero_grad()
        loss = _loss(ddp, rank, step, dtype)
        (loss * (1e39 if step == 2 and rank == 1 else 1.0)).backward()
        grads = [p.grad for p in model.parameters()]
        if not all(bool(g.isfinite().all()) for g in grads):  # as GradScaler does: skip the step
            out["skipped"].append((step, _same(before, _memory(state)), all(bool(g.isnan().all()) for g in grads)))
        else:
            opt.step()
    out.update(nonfinite_rounds=state.stats.nonfinite_rounds, params=_params(model))
    return out


def _overflow_inside_payload(rank: int) -> dict:
    model = _model()
    ddp = DDP(model, bucket_cap_mb=CAP)
    state = ddp_hooks.register(ddp, "ef21", ratio=0.05, check_every=1)
    switch = _poison(model[0].weight)
    flagged = []
    for step, value in enumerate((None, 3e38, -3e38, None)):  # g_i takes 3e38, then x - g_i = -6e38 = -inf
        switch["value"] = value if rank == 1 else None
        before = _memory(state)
        ddp.zero_grad()
        _loss(ddp, rank, step).backward()
        flagged.append((state.stats.nonfinite_rounds, _same(before, _memory(state))))
    return {"flagged": flagged}


def _owner_overflow(rank: int) -> dict:
    """co3_2s: every rank's gradient holds 3e38 at the same entry at step 2, so each payload is
    finite but the owner's mean of the chunk overflows: a flag in the second stage's header,
    a skipped round on every rank, no NaN written into any owner error."""
    model = _model()
    ddp = DDP(model, bucket_cap_mb=CAP)
    state = ddp_hooks.register(ddp, "co3_2s", gamma=1.0, scale="max", check_every=1)
    switch = _poison(model[0].weight)
    flagged = []
    for step, value in enumerate((None, None, 3e38, None, None)):
        switch["value"] = value
        before = _memory(state)
        ddp.zero_grad()
        _loss(ddp, rank, step).backward()
        flagged.append((state.stats.nonfinite_rounds, _same(before, _memory(state)),
                        bool(model[0].weight.grad.isnan().all())))
    finite = all(bool(t.isfinite().all()) for s in _memory(state).values() for t in s.values())
    return {"flagged": flagged, "finite": finite, "all_to_all": state.stats.collectives.get("all_to_all", 0)}


def _owner_flags(rank: int) -> dict:
    """onebit (fixed-size chunks: each owner's flag travels in its slot of the all_gather, no
    header): rank 1's owner step finds its chunk's mean non-finite at step 2 and raises at
    step 4. Every rank skips step 2 (NaN bucket, memories untouched) and raises at step 4."""
    model = _model()
    ddp = DDP(model, bucket_cap_mb=CAP)
    state = ddp_hooks.register(ddp, "onebit", check_every=1)

    def boom(*args: object) -> None:
        raise RuntimeError("injected owner failure")
    out: dict = {"steps": [], "headers": 0}
    header = ddp_hooks.protocol.Protocol.header

    def counted(self: ddp_hooks.protocol.Protocol, *args: object) -> list[list[int]]:
        out["headers"] += 1
        return header(self, *args)
    ddp_hooks.protocol.Protocol.header = counted  # this rank's process only
    for step in range(6):
        for b in state.buckets:
            b.worker.__dict__.pop("relay", None)
            if rank == 1 and step in (2, 4):
                b.worker.relay = (lambda *args: None) if step == 2 else boom
        before = _memory(state)
        ddp.zero_grad()
        outcome = _outcome(lambda: _loss(ddp, rank, step).backward())
        out["steps"].append((outcome[0], state.stats.nonfinite_rounds, _same(before, _memory(state)),
                             bool(model[0].weight.grad.isnan().all())))
    ddp_hooks.protocol.Protocol.header = header
    out["params"] = _params(model)
    return out


def _mismatch(rank: int, left: dict, right: dict) -> dict:
    """Rank 0 registers ``left``, the others ``right``: every rank raises naming the field."""
    model = _model()
    ddp = DDP(model, bucket_cap_mb=CAP)
    options = dict(left if rank == 0 else right)
    if options.get("optimizer") == "sgd":
        options["optimizer"] = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ddp_hooks.register(ddp, **options)
    return {"first": _outcome(lambda: _loss(ddp, rank, 0).backward()),
            "again": _outcome(lambda: _loss(ddp, rank, 1).backward())}


def _foreign_checkpoint(rank: int) -> dict:
    """After 2 steps every rank loads rank 0's hook state (saved once, like the model) into a fresh
    DDP wrapper: the first round raises on every rank; each rank's own state resumes."""
    model = _model()
    ddp = DDP(model, bucket_cap_mb=CAP)
    state = ddp_hooks.register(ddp, "ef21", ratio=0.05)
    for step in range(2):
        _loss(ddp, rank, step).backward()
    files: list = [None]
    if rank == 0:
        files[0] = state.state_dict()
    dist.broadcast_object_list(files, src=0)
    out = {}
    for label, saved in (("rank 0's", files[0]), ("own", state.state_dict())):
        fresh = DDP(_model(), bucket_cap_mb=CAP)
        ddp_hooks.register(fresh, "ef21", ratio=0.05).load_state_dict(saved)
        out[label] = _outcome(lambda: _loss(fresh, rank, 2).backward())
    return out


def _diverged(rank: int) -> dict:
    """Rank 1's aggregate replica is corrupted after step 2: the replica check raises everywhere,
    until every rank loads the hook state it saved at step 2."""
    model = _model()
    ddp = DDP(model, bucket_cap_mb=CAP)
    state = ddp_hooks.register(ddp, "ef21", ratio=0.05, check_every=1)
    outcomes, saved = [], None
    for step in range(7):
        if step == 2:
            saved = copy.deepcopy(state.state_dict())
        if step == 3 and rank == 1:
            state.buckets[0].estimate[0] += 1.0
        if step == 5:
            state.load_state_dict(saved)
        outcomes.append(_outcome(lambda: _loss(ddp, rank, step).backward()))
    return {"outcomes": outcomes}


def _partial_load(rank: int) -> dict:
    """Every rank saves its hook state at step 2; at step 3 rank 0 alone reloads it (its own, at the
    iteration every rank is at: nothing differs), at step 5 rank 0 alone loads it again (two
    iterations behind the others): every rank raises until every rank loads the step-2 state."""
    model = _model()
    ddp = DDP(model, bucket_cap_mb=CAP)
    state = ddp_hooks.register(ddp, "ef21", ratio=0.05)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def train(step: int) -> None:
        opt.zero_grad()
        _loss(ddp, rank, step).backward()
        opt.step()

    outcomes, saved = [], None
    for step in range(9):
        if step == 2:
            saved = copy.deepcopy(state.state_dict())
        if step in (2, 5) and rank == 0:
            state.load_state_dict(copy.deepcopy(saved))
        if step == 7:
            state.load_state_dict(copy.deepcopy(saved))
        outcomes.append(_outcome(lambda: train(step)))
    return {"outcomes": outcomes, "params": _params(model), "buckets": len(state.buckets)}


class _Odd(nn.Module):
    """A 0-element parameter, a 1-element one, an unused branch."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.unused = nn.Linear(20, 1), nn.Linear(20, 3)
        self.one, self.empty = nn.Parameter(torch.ones(1)), nn.Parameter(torch.zeros(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * self.one + self.empty.sum()


SPEC_MISMATCHES = (("ef21", "step"), ("onebit", "step"), ("onebit", "relay"))
DECODE_ERRORS = (("ef21", "fold", 3), ("co3_2s", "collect", 3), ("ef21", "begin", 0))  # begin: the dense round
ODD = ("ef21", "clag", "co3", "co3_2s", "onebit", "sasg")


def _odd_buckets(rank: int, hook: str) -> dict:
    """Buckets of 0 and 1 elements (1-byte buckets) and find_unused_parameters=True."""
    model = _Odd()
    ddp = DDP(model, bucket_cap_mb=1e-6, find_unused_parameters=True)
    state = ddp_hooks.register(ddp, hook, check_every=1,
                               **({} if hook.startswith("co3") or hook == "onebit" else {"ratio": 0.05}))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 1-element buckets send more than dense
        for step in range(5):
            opt.zero_grad()
            _loss(ddp, rank, step).backward()
            opt.step()
    return {"params": _params(model), "sizes": sorted(sum(b.sizes) for b in state.buckets)}


def _k_too_large(rank: int) -> dict:
    model = _model()
    ddp = DDP(model, bucket_cap_mb=CAP)
    state = ddp_hooks.register(ddp, "ef21", k=10**6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(3):
            _loss(ddp, rank, step).backward()
    summary = state.stats.summary()
    half = DDP(_model().to(torch.bfloat16), bucket_cap_mb=CAP)
    ddp_hooks.register(half, "gd")  # fp32 values for a bf16 bucket: twice its bytes
    with warnings.catch_warnings(record=True) as dense:
        warnings.simplefilter("always")
        for step in range(2):  # the first round is dense
            _loss(half, rank, step, torch.bfloat16).backward()
    return {"warnings": [str(w.message) for w in caught if w.category is RuntimeWarning],
            "gd warnings": [str(w.message) for w in dense if w.category is RuntimeWarning],
            "fraction": summary["fraction_of_dense"]}


MISMATCHES = {
    "mechanism": ({"name": "ef21", "ratio": 0.05}, {"name": "ef14", "ratio": 0.05}),
    "warmup_steps": ({"name": "ef21", "warmup_steps": 1}, {"name": "ef21", "warmup_steps": 2}),
    "3pcv5 p": ({"name": "3pcv5", "p": 0.1}, {"name": "3pcv5", "p": 0.2}),
    "optimizer": ({"name": "ef14_mc", "optimizer": "sgd"}, {"name": "ef14_mc"}),  # the same repr, told or not
}


def _single_group(rank: int, workers: int) -> dict:
    out = {f"nonfinite {h}": _nonfinite_propagates(rank, h, o) for h, o in NONFINITE_HOOKS.items()}
    out.update({f"no-op {h}": _skip_is_a_no_op(rank, h, o) for h, o in NO_OP_HOOKS.items()})
    out["raise"] = _nonfinite_raises(rank)
    out["hook error"] = _hook_error(rank)
    for hook, method in SPEC_MISMATCHES:
        out[f"spec mismatch {hook} {method}"] = _spec_mismatch(rank, hook, method)
    for label, args in PACK_ERRORS.items():
        out[f"pack error {label}"] = _pack_error(rank, *args)
    for hook, method, at in DECODE_ERRORS:
        out[f"decode error {hook} {method}"] = _decode_error(rank, hook, method, at)
    out["decode error refused everywhere"] = _decode_error(rank, "ef21", "fold", 3, nan=True)
    for dtype in (torch.float16, torch.bfloat16):
        out[f"overflow {dtype}"] = _overflow(rank, dtype)
    out["overflow inside payload"] = _overflow_inside_payload(rank)
    out["owner overflow"] = _owner_overflow(rank)
    out["owner flags"] = _owner_flags(rank)
    for name, (left, right) in MISMATCHES.items():
        out[f"mismatch {name}"] = _mismatch(rank, left, right)
    out["diverged"] = _diverged(rank)
    out["foreign checkpoint"] = _foreign_checkpoint(rank)
    out["partial load"] = _partial_load(rank)
    for hook in ODD:
        out[f"odd {hook}"] = _odd_buckets(rank, hook)
    out["k too large"] = _k_too_large(rank)
    return out


@pytest.fixture(scope="module", params=[2, 4], ids=lambda n: f"{n}ranks")
def scenarios(request: pytest.FixtureRequest) -> list[dict]:
    """Every single-group scenario, on 2 and on 4 ranks (rank 1 is the one that fails)."""
    return run_ranks(_single_group, request.param, timeout=300)


# -- spawn 2: four ranks, two subgroups with their own DDP models; then one dies, one raises ----
def _four_ranks(rank: int, workers: int) -> dict:
    groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    model = _model()
    ddp = DDP(model, bucket_cap_mb=CAP, process_group=groups[rank // 2])
    state = ddp_hooks.register(ddp, "ef21", ratio=0.05, check_every=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(4):
        opt.zero_grad()
        _loss(ddp, rank, step).backward()
        opt.step()
    sums: list = [None] * workers  # every rank's parameters, before two of them fail
    dist.all_gather_object(sums, [p.double().sum().item() for p in _params(model)])
    out = {"sums": sums, "group": dist.get_process_group_ranks(state.group)}

    def step() -> None:  # rank 1 is killed, rank 3's loss raises: their peers must fail, not hang
        if rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        if rank == 3:
            raise ValueError("bad batch in the loss")
        _loss(ddp, rank, 4).backward()

    out["peer failed"] = _outcome(step) if rank in (0, 2) else step()
    return out


@pytest.fixture(scope="module")
def four() -> list:
    return run_ranks(_four_ranks, 4, timeout=120)


# -- spawns 3 and 4: save at step 4, restart in new processes, load, continue --------------------
RESUMED = {name: {"ratio": 0.05} if any(o.name == "ratio" for o in e.options) else {}
           for name, e in MECHANISMS.items()}  # label ("<registry name>[ <variant>]") -> options
RESUMED["ef14 shared_topk"] = {"ratio": 0.05, "compressor": "shared_topk"}  # the support is aggregate state
RESUMED["co3_2s fp4"] = {"fmt": "fp4-121"}  # the owners' errors are worker memory
WRAPPERS = ({}, {"static_graph": True}, {"gradient_as_bucket_view": True})
SAVE, MORE = 4, 3


def _resume(rank: int, workers: int, folder: str, restart: bool) -> dict:
    """Every hook: an uninterrupted run that saves each rank's checkpoint at step SAVE
    (``restart=False``), or a fresh process that loads it and runs the remaining steps."""
    out = {}
    for i, (hook, options) in enumerate(RESUMED.items()):
        path = Path(folder, f"{hook}.{rank}.pt")
        model = _model()
        saved = torch.load(path) if restart else None
        if saved:
            model.load_state_dict(saved["model"])
        ddp = DDP(model, bucket_cap_mb=CAP, **WRAPPERS[i % len(WRAPPERS)])
        state = ddp_hooks.register(ddp, hook.split()[0], **options)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        if saved:
            opt.load_state_dict(saved["opt"])
            state.load_state_dict(saved["hook"])
        for step in range(SAVE if restart else 0, SAVE + MORE):
            if step == SAVE and not restart:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "hook": state.state_dict()}, path)
            opt.zero_grad()
            _loss(ddp, rank, step).backward()
            opt.step()
        out[hook] = {"params": _params(model), "buckets": len(state.buckets), "dense": state.stats.dense_rounds}
    return out


@pytest.fixture(scope="module", params=[2, 4], ids=lambda n: f"{n}ranks")
def resumed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], list[dict]]:
    folder, workers = str(tmp_path_factory.mktemp("checkpoints")), request.param
    return (run_ranks(_resume, workers, folder, False, timeout=180),
            run_ranks(_resume, workers, folder, True, timeout=180))


# -- the scenarios' outcomes ---------------------------------------------------------------
AGREED = 10.0  # seconds: every agreed failure is raised within the round that saw it


def _fails(outcome: tuple[str, float], *needles: str) -> None:
    message, seconds = outcome[:2]
    assert "ThreePCError" in message and all(n in message for n in needles), message
    assert seconds < AGREED, (seconds, message)


def _kept(result: dict) -> None:
    """backward() raised torch's RuntimeError around the agreed failure; ``state.last_error`` is
    the ThreePCError itself (the last bucket's that failed: the same up to the bucket it names)."""
    assert result["last_errors"] == [("ThreePCError", True)] * len(result["failures"]), result["last_errors"]


@pytest.mark.parametrize("hook", list(NONFINITE_HOOKS))
def test_a_nonfinite_gradient_on_one_rank_skips_the_step_and_touches_no_memory(scenarios, hook):
    ranks = [r[f"nonfinite {hook}"] for r in scenarios]
    for r in ranks:
        assert r["memory_untouched"], "a skipped round must leave worker memories and aggregates as they were"
        assert r["step_skipped"] and r["scale"][1] == r["scale"][0] / 2, "GradScaler must have seen the NaN"
        assert r["nonfinite_rounds"] >= 1 and r["finite"], "training goes on, finite"
        assert r["nonfinite_rounds"] == ranks[0]["nonfinite_rounds"]
        assert all(torch.equal(a, b) for a, b in zip(r["params"], ranks[0]["params"])), "replicas stay identical"


@pytest.mark.parametrize("hook", list(NO_OP_HOOKS))
def test_a_skipped_step_is_a_no_op_for_the_steps_after_it(scenarios, hook):
    assert all(r[f"no-op {hook}"] for r in scenarios)


def test_nonfinite_raise_raises_on_every_rank_naming_the_parameter_and_training_goes_on(scenarios):
    for rank, r in enumerate(scenarios):
        [(step, *outcome, untouched)] = r["raise"]["failures"]
        assert step == 3 and untouched
        _fails(outcome, f"non-finite gradient on 1 of {len(scenarios)} ranks", "2.weight")
        assert ("this rank: non-finite gradient in ['2.weight']" in outcome[0]) == (rank == 1), outcome[0]
        _kept(r["raise"])
    assert all(torch.equal(a, b) for a, b in zip(scenarios[0]["raise"]["params"], scenarios[1]["raise"]["params"]))


def _one_rank_failed(scenarios: list[dict], key: str, its_error: str) -> None:
    """Rank 1 failed at step 3: every rank raised the agreed error (rank 1's naming ``its_error``),
    no memory changed, training went on and the replicas are identical."""
    for rank, r in enumerate(scenarios):
        [(step, *outcome, untouched)] = r[key]["failures"]
        assert step == 3 and untouched
        _fails(outcome, f"threepc hook failed on 1 of {len(scenarios)} ranks",
               its_error if rank == 1 else "this rank did not fail")
        _kept(r[key])
    for r in scenarios[1:]:
        assert all(torch.equal(a, b) for a, b in zip(scenarios[0][key]["params"], r[key]["params"]))


def test_an_exception_in_one_ranks_hook_is_raised_on_every_rank_and_rolled_back(scenarios):
    _one_rank_failed(scenarios, "hook error", "injected failure")


@pytest.mark.parametrize("hook,method", SPEC_MISMATCHES)
def test_a_payload_that_disagrees_with_its_spec_raises_on_every_rank_not_a_hang(scenarios, hook, method):
    _one_rank_failed(scenarios, f"spec mismatch {hook} {method}", "step() and spec() disagree")


@pytest.mark.parametrize("label", list(PACK_ERRORS))
def test_a_protocol_that_fails_before_its_collectives_on_one_rank_raises_on_every_rank_not_a_hang(scenarios, label):
    _one_rank_failed(scenarios, f"pack error {label}", "injected allocation failure in the protocol")


@pytest.mark.parametrize("hook, method, at", DECODE_ERRORS)
def test_decoding_that_fails_on_one_rank_alone_stops_every_rank_until_they_load_a_checkpoint(scenarios, hook, method,
                                                                                             at):
    """Two outcomes, by timing, the same on every rank: the other ranks kept the iteration (the
    failing rank's flag reached none of its buckets), and every rank raises from the next step
    until each loads its checkpoint; or a bucket issued after the failure carried the flag, every
    rank rolled the iteration back, and training goes on at once."""
    kept = scenarios[0][f"decode error {hook} {method}"]["outcomes"][at] == "ok"
    for rank, r in enumerate(scenarios):
        out = r[f"decode error {hook} {method}"]["outcomes"]
        assert out[:at] == ["ok"] * at
        if rank == 1:
            assert "decoding failed on rank 1" in out[at] and "Restore every rank from a checkpoint" in out[at]
        else:
            assert (out[at] == "ok") == kept and (kept or f"failed on 1 of {len(scenarios)} ranks" in out[at]), out
        for later in out[at + 1:at + 3]:  # every rank, agreed, no hang
            if kept:
                assert f"threepc hook failed on 1 of {len(scenarios)} ranks" in later, later
                assert ("decoding failed on rank 1" in later) == (rank == 1), later
            else:
                assert later == "ok", later
        assert out[at + 3:] == ["ok"] * (7 - at - 3), "each rank's own checkpoint: training goes on"
        assert r[f"decode error {hook} {method}"]["last_error"] == "ThreePCError"
        refused = "ValueError: state_dict() refused" in r[f"decode error {hook} {method}"]["save after"]
        assert refused == (rank == 1 and kept)
    first, *others = (r[f"decode error {hook} {method}"]["params"] for r in scenarios)
    assert all(torch.equal(a, b) for o in others for a, b in zip(first, o)), "replicas identical after the resume"


def test_a_decoding_failure_in_an_iteration_every_rank_refused_differs_in_nothing(scenarios):
    """Rank 1's decoding fails while rank 0's gradient is NaN: every rank rolls the iteration back
    (the flags), so rank 1's state is the others' and training goes on without a checkpoint."""
    for rank, r in enumerate(scenarios):
        out = r["decode error refused everywhere"]["outcomes"]
        assert ("decoding failed on rank 1" in out[3]) == (rank == 1) and out[:3] + out[4:] == ["ok"] * 6, out
        assert r["decode error refused everywhere"]["save after"] == "ok"
    first, *others = (r["decode error refused everywhere"]["params"] for r in scenarios)
    assert all(torch.equal(a, b) for o in others for a, b in zip(first, o))


@pytest.mark.parametrize("dtype", ["torch.float16", "torch.bfloat16"])
def test_low_precision_overflow_is_a_skipped_round(scenarios, dtype):
    ranks = [r[f"overflow {dtype}"] for r in scenarios]
    for r in ranks:
        assert r["skipped"] == [(2, True, True)], "step 2 returns NaN everywhere, memories untouched"
        assert r["nonfinite_rounds"] >= 1
        assert all(torch.equal(a, b) and bool(a.isfinite().all()) for a, b in zip(r["params"], ranks[0]["params"]))


def test_an_overflow_inside_the_compressed_values_is_a_skipped_round(scenarios):
    for r in scenarios:
        flagged = r["overflow inside payload"]["flagged"]
        assert [f[0] for f in flagged] == [0, 0, 1, 1], "x - g_i = -inf at step 2 only"
        assert all(untouched for _, untouched in flagged[2:3])


def test_an_overflow_of_an_owners_mean_is_a_skipped_round_on_every_rank(scenarios):
    for r in scenarios:
        out = r["owner overflow"]
        assert out["all_to_all"] > 0
        assert out["flagged"] == [(0, False, False), (0, False, False), (1, True, True), (1, False, False),
                                  (1, False, False)], "step 2 only: NaN bucket, memories untouched"
        assert out["finite"], "no owner error took a NaN"


def test_an_owners_flag_in_a_fixed_size_two_stage_round_is_agreed_without_a_header(scenarios):
    n = len(scenarios)
    for r in scenarios:
        steps = r["owner flags"]["steps"]
        assert [s[0] for s in steps[:2]] == ["ok", "ok"] and steps[1][1] == 0
        assert steps[2][0] == "ok" and steps[2][1] >= 1 and steps[2][2] and steps[2][3], \
            "step 2: a skipped round on every rank, NaN bucket, memories untouched"
        assert f"threepc hook failed on 1 of {n} ranks" in steps[4][0] and "injected owner failure" in \
            scenarios[1]["owner flags"]["steps"][4][0] and steps[4][2], "step 4: every rank raises, rolled back"
        assert steps[5][0] == "ok" and not steps[5][3], "training goes on"
        assert r["owner flags"]["headers"] == 0, "fixed-size chunks: no header collective"
    assert all(torch.equal(a, b) for a, b in zip(scenarios[0]["owner flags"]["params"],
                                                  scenarios[1]["owner flags"]["params"]))


@pytest.mark.parametrize("name", list(MISMATCHES))
def test_ranks_configured_differently_all_raise_naming_the_field(scenarios, name):
    left, right = MISMATCHES[name]
    field = name if name in ("warmup_steps", "optimizer") else "mechanism"
    for r in scenarios:
        outcome = r[f"mismatch {name}"]
        _fails(outcome["first"], "configuration differs across ranks", f"{field}: rank 0", "rank 1")
        _fails(outcome["again"], "configuration differs")
    if name == "3pcv5 p":
        message = scenarios[0]["mismatch 3pcv5 p"]["first"][0]
        assert "p=0.1" in message and "p=0.2" in message


def test_every_rank_loading_rank_0s_hook_state_raises_on_every_rank_naming_the_fix(scenarios):
    """EF21's aggregate would keep the offset of the duplicated memories for good (a silent bias)."""
    for r in scenarios:
        _fails(r["foreign checkpoint"]["rank 0's"], "configuration differs", "checkpoint: rank 0 'its own'",
               "rank 1 \"rank 0's\"", "hook-rank{rank}.pt")
        assert r["foreign checkpoint"]["own"][0] == "ok", r["foreign checkpoint"]["own"]


def test_diverged_replicas_raise_on_every_rank_at_the_next_check(scenarios):
    for r in scenarios:
        outcomes = r["diverged"]["outcomes"]
        assert [o[0] for o in outcomes[:3]] == ["ok"] * 3
        _fails(outcomes[3], "aggregate replica differs")
        _fails(outcomes[4], "aggregate replica differs")
        assert [o[0] for o in outcomes[5:]] == ["ok"] * 2, "a load on every rank clears it"


def test_a_checkpoint_loaded_on_one_rank_alone_raises_on_every_rank_not_an_abort(scenarios):
    """Before, the loading rank alone compared configurations after the load and met the others'
    payload collective: gloo aborted that process (a collective mismatch)."""
    for r in scenarios:
        outcomes = r["partial load"]["outcomes"]
        assert [o[0] for o in outcomes[:5]] == ["ok"] * 5, "rank 0 reloading the state every rank holds"
        for o in outcomes[5:7]:
            _fails(o, "configuration differs", "iteration: rank 0 '2', rank 1 '5'", "saved at the same step")
        assert [o[0] for o in outcomes[7:]] == ["ok"] * 2, "a load on every rank clears it"
    assert scenarios[0]["partial load"]["buckets"] > 1
    for r in scenarios[1:]:
        assert all(torch.equal(a, b) for a, b in zip(r["partial load"]["params"], scenarios[0]["partial load"]["params"]))


@pytest.mark.parametrize("hook", ODD)
def test_empty_and_one_element_buckets_with_unused_parameters(scenarios, hook):
    ranks = [r[f"odd {hook}"] for r in scenarios]
    assert min(ranks[0]["sizes"]) <= 1, ranks[0]["sizes"]
    for r in ranks:
        assert all(torch.equal(a, b) and bool(a.isfinite().all()) for a, b in zip(r["params"], ranks[0]["params"]))


def test_k_larger_than_a_bucket_warns_and_counts_what_it_sends(scenarios):
    for r in scenarios:
        assert r["k too large"]["warnings"] and "more than its dense allreduce" in r["k too large"]["warnings"][0]
        assert r["k too large"]["fraction"] > 1.0
        assert "DDP's own allreduce (no hook)" in r["k too large"]["warnings"][0]
        assert r["k too large"]["gd warnings"] and "gd sends fp32" in r["k too large"]["gd warnings"][0], \
            "the gd hook must not advise itself"


@pytest.mark.parametrize("dtype, warns", [(torch.bfloat16, True), (torch.float32, False)])
def test_a_bucket_of_a_few_entries_warns_when_payload_and_flags_outweigh_it(dtype, warns):
    """PackedTopK on 4 entries: a 7-byte payload and 8 bytes of flags, against 8 dense bytes in
    bf16 (warned: the payload alone, 7, did not outweigh them) and 16 in fp32 (not warned)."""
    from types import SimpleNamespace

    from compressors import EF14, PackedTopK
    from ddp_hooks.hook import _warn_if_larger_than_dense

    state = SimpleNamespace(warned=set(), mechanism=EF14(PackedTopK(0.05)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _warn_if_larger_than_dense(state, PackedTopK(0.05).spec(4), torch.zeros(4, dtype=dtype))
    messages = [str(w.message) for w in caught]
    assert messages == ([messages[0]] if warns and "(payload and flags)" in messages[0] else []), messages


def test_subgroups_of_a_world_of_four_train_two_independent_models(four):
    assert [four[r]["group"] for r in (0, 2)] == [[0, 1], [2, 3]]
    sums = four[0]["sums"]
    same = [sums[i] == sums[j] for i, j in ((0, 1), (2, 3), (0, 2))]
    assert same == [True, True, False], "replicas agree within a subgroup, and only there"


def test_a_killed_rank_or_a_raising_loss_makes_its_peers_fail_fast(four):
    killed, raised = four[1], four[3]
    assert isinstance(killed, RankFailure) and killed.exitcode == -signal.SIGKILL
    assert isinstance(raised, RankFailure) and "bad batch in the loss" in raised.error
    for peer in (four[0], four[2]):
        message, seconds = peer["peer failed"]
        assert message != "ok" and seconds < 30, peer["peer failed"]


@pytest.mark.parametrize("hook", list(RESUMED))
def test_resume_after_a_restart_is_bit_identical(resumed, hook):
    uninterrupted, restarted = resumed
    for rank in range(len(uninterrupted)):
        a, b = uninterrupted[rank][hook], restarted[rank][hook]
        assert b["buckets"] > 1, "the model spreads over several buckets"
        assert b["dense"] == a["dense"], "the restart ran no dense round"
        assert all(torch.equal(x, y) for x, y in zip(a["params"], b["params"])), f"{hook} drifted after the restart"


def test_the_finiteness_check_sums_once_and_falls_back_on_overflow():
    """The finiteness check of the hook and the two-stage owner: NaN and infinities anywhere are
    caught (also +inf and -inf together, whose sum is NaN), finite values whose fp32 sum
    overflows are still finite, and integer parts are not checked."""
    from compressors.core.mechanism import all_finite

    x = torch.randn(10_000)
    assert all_finite(x, x.half(), x.bfloat16(), torch.arange(5))
    for bad in (float("nan"), float("inf"), float("-inf")):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            y = x.to(dtype)
            y[7_777] = bad
            assert not all_finite(x, y)
    both = x.clone()
    both[[1, 2]] = torch.tensor([float("inf"), float("-inf")])
    assert not all_finite(both)
    assert all_finite(torch.full((4,), 3e38))  # the sum overflows, every value is finite
    finite = torch.randn(100)  # (x itself took the NaNs above: x.to(torch.float32) is x)
    assert all_finite(finite, torch.full((4,), 3e38))  # ... also among several tensors (read back at once)
    assert all_finite(finite[:0], finite) and all_finite() and not all_finite(finite, x)
    assert all_finite(torch.full((4,), 60000.0, dtype=torch.float16))  # an fp16 sum would overflow
