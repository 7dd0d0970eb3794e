"""A bucket's ``.then()`` callback holds nothing once it has run (``ddp_hooks.hook._Once``).

torch frees a callback on the gloo worker that ran it, after the future it completes has woken
the training thread. Had it still held the bucket's rounds, a ``train(); destroy_process_group()``
right after the last backward could leave it the process group's last reference, and
``~ProcessGroupGloo`` would join its own worker: the process aborts ("Resource deadlock avoided",
seen once in CI). The check is structural, so it does not depend on winning that race.
"""
from __future__ import annotations

import gc
import types

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import ddp_hooks
from ddp_hooks import hook


def _reaches(root: object, target: object, limit: int = 200_000) -> bool:
    """Whether ``target`` is reachable from ``root`` through closures, containers and attributes
    (not through a function's module globals, a module or a class: those reach everything)."""
    seen, todo = set(), [root]
    while todo and len(seen) < limit:
        obj = todo.pop()
        if obj is target:
            return True
        if id(obj) in seen or isinstance(obj, (types.ModuleType, type)):
            continue
        seen.add(id(obj))
        if isinstance(obj, types.FunctionType):
            todo.extend(c.cell_contents for c in obj.__closure__ or () if c.cell_contents is not None)
            todo.extend(obj.__defaults__ or ())
        elif not (isinstance(obj, dict) and "__builtins__" in obj):
            todo.extend(gc.get_referents(obj))
    return False


def test_reaches_finds_a_closure_that_holds_the_target_and_not_one_that_let_go():
    target = object()
    holding = [{"x": target}]
    assert _reaches(lambda: holding, target)
    assert not _reaches(lambda: [1, 2], target)


@pytest.mark.parametrize("name", ["default", "ef21", "co3"])
def test_a_buckets_callback_has_let_go_of_its_rounds_when_the_backward_returns(one_rank, monkeypatch, name):
    callbacks = []

    class Recorded:  # collect_all's future, recording the callbacks the hook hands to it
        def __init__(self, future):
            self.future = future

        def then(self, callback):
            callbacks.append(callback)
            return self.future.then(callback)

    real = hook.collect_all
    monkeypatch.setattr(hook, "collect_all", lambda futures: Recorded(real(futures)))
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))
    ddp = DDP(model, bucket_cap_mb=0.001)  # several buckets from the second iteration on
    state = ddp_hooks.register(ddp) if name == "default" else ddp_hooks.register(ddp, name)
    for _ in range(3):
        nn.functional.cross_entropy(ddp(torch.randn(8, 20)), torch.randint(0, 4, (8,))).backward()
    assert len(callbacks) > 3
    assert not [c for c in callbacks if _reaches(c, state)]
