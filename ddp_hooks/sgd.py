"""``ef14_mc`` told its SGD: ``register(ddp, "ef14_mc", optimizer=sgd)``.

The hook corrects the momentum before compressing (``compressors.mechanisms.ef14_momentum``):
each rank keeps the momentum of its own gradient, error feedback runs on it, and torch's SGD
steps by the aggregate a^t of the compressed momenta on g^t = a^t - beta a^{t-1}. beta is read
from the optimizer every round (a scheduler may change it).

Gradient clipping (``attach``): g^t carries the momentum's pulses, about 1/(1 - beta) times a
gradient's norm, so the hook leaves g^t in ``.grad`` rescaled to this rank's estimate of the mean
gradient's norm (``MomentumCorrectedEF14.presented``, ``ef14_momentum.mean_norm2``); the user's
``clip_grad_norm_(params, tau)`` then scales it by c = min(1, tau / that norm), the step reads c
back (``adam.rescaling``), takes it into the round after the fact (``MomentumCorrectedEF14.clip``:
the rank's memories as if the round had taken c grad_i) and puts g^t back in ``.grad`` for torch's
own SGD step, whose momentum buffer, weight decay, Nesterov, hooks and checkpoints stay torch's;
zeros the user wrote into ``.grad`` (a pruning mask; ``adam.rescaling``) stay zeros.
The factor takes effect one round late: the step applies g^t, whose round took the factor of the
round before, and c reaches the aggregate through the memories in later rounds. A factor that
moves slowly (clipping active step after step) is followed; a one-step gradient spike is stepped
at the previous factor, then taken back over the next rounds. A dense round (the first, every
warm-up round) is clipped exactly: every rank holds the mean gradient, so every rank reads the
same c, and the aggregate itself is scaled. One step per synchronised backward: a second one
before the step raises (accumulate under ``ddp.no_sync()``). The factor the rounds take lives in
the hook's workers, not in checkpoints: a resumed hook's first round takes 1 and its step
corrects it. A GradScaler must be told (``register(..., scaler=)``): the hook then divides each
bucket by its scale, and ``unscale_`` leaves the rescaled g^t for the clipping; untold,
``unscale_`` reads as a clipping by 1/S, and the first rounds step S times too far.
"""
from __future__ import annotations

import functools
import math
import types
import warnings

import torch

from compressors.mechanisms.ef14_momentum import MomentumCorrectedEF14, checked_beta

from .adam import (ACCUMULATE, SCHEDULER_MARK, SKIPPED_STEP_HINT, UNSCALED, check_attachable, dropped, rescaling,
                   started, unscaled_by_the_scaler)
from .memory_order import shaped
from .state import ThreePCState


# the fix both of live_momentum's errors name: register(ddp) picks ef14_mc for a momentum SGD, so "the default" is no way out
UNCORRECTED = ("register the hook without the correction: register(ddp, optimizer=None), error feedback on the raw "
               "gradients, which any SGD steps as it is")


def live_momentum(optimizer: torch.optim.SGD) -> float:
    """The momentum every param group of ``optimizer`` has now, or a ValueError naming the fix
    (the hook corrects whole DDP buckets with one beta; dampening changes the buffer's recursion)."""
    groups = optimizer.param_groups
    if any(float(g.get("dampening", 0.0)) != 0.0 for g in groups):
        raise ValueError("ef14_mc corrects the momentum of SGD without dampening; this SGD has dampening != 0. "
                         f"Build it with dampening=0, or {UNCORRECTED}")
    betas = {float(g["momentum"]) for g in groups}
    if len(betas) != 1:
        raise ValueError(f"ef14_mc needs one momentum for every param group (the hook corrects whole DDP "
                         f"buckets); the groups have {sorted(betas)}. Give every group the same momentum (also where "
                         f"a schedule moves it), or {UNCORRECTED}")
    return checked_beta(betas.pop())


def corrects(optimizer: torch.optim.Optimizer | None, model: torch.nn.Module) -> bool:
    """Whether ``register(ddp)`` runs ``ef14_mc`` for ``optimizer``: a torch SGD with heavy-ball
    momentum (one beta > 0 in every param group, no dampening, no Nesterov: Nesterov's step adds
    g^t itself, whose compressed pulses the correction leaves undamped; measured, the held-out GRU
    at 4 ranks +2.5% against the uncorrected default's +0.9%, ``accuracy_held_out.md``) that
    steps every trainable parameter of ``model`` and no other (``adam.check_attachable``). torch's
    own SGD only: a subclass's ``step`` (LARS, gradient centralisation) may read ``.grad`` otherwise."""
    if not heavy_ball(optimizer):
        return False
    try:
        check_attachable(optimizer, model)
    except ValueError:
        return False
    return True


def heavy_ball(optimizer: torch.optim.Optimizer | None) -> bool:
    """``corrects`` without the model: torch's own SGD, one momentum > 0, no dampening, no Nesterov."""
    if type(optimizer) is not torch.optim.SGD or any(g.get("nesterov", False) for g in optimizer.param_groups):
        return False
    try:
        return live_momentum(optimizer) > 0.0
    except ValueError:
        return False


def follows(optimizer: torch.optim.SGD) -> functools.partial:
    """What a round calls for beta: ``live_momentum`` of ``optimizer``, checked once now."""
    live_momentum(optimizer)
    return functools.partial(live_momentum, optimizer)


def attach(optimizer: torch.optim.SGD, state: ThreePCState, note: str = "") -> None:
    """Make ``optimizer.step`` follow the user's rescaling of ``.grad`` (gradient clipping) into
    the hook's memories and step torch's SGD on the agreed g^t (module docstring). ``note``: what
    the step's errors add (how the mode was chosen)."""
    applied = {"at": state.committed_iterations}  # the hook's committed iterations at the last step or zero_grad

    def step(self: torch.optim.SGD, closure=None):  # noqa: ANN001, ANN202 - torch's signature
        loss = started(self, closure)
        rounds = state.committed_iterations - applied["at"]
        if rounds > 1:
            raise RuntimeError(f"optimizer.step() follows {rounds} synchronised backward passes: told its SGD, "
                               "ef14_mc leaves each round's g^t in .grad, to which another backward adds a raw "
                               "gradient, and its memories take one clipping factor per round. " + ACCUMULATE
                               + SKIPPED_STEP_HINT + note)
        if rounds == 1:  # .grad holds a round's presented g^t
            applied["at"] = state.committed_iterations
            restore(self, state)
        type(self).step(self)
        return loss

    def zero_grad(self: torch.optim.SGD, set_to_none: bool = True) -> None:
        """torch's, and ``.grad`` holds no round until the next backward."""
        dropped(state, state.committed_iterations - applied["at"])
        applied["at"] = state.committed_iterations
        type(self).zero_grad(self, set_to_none)

    optimizer.zero_grad = types.MethodType(zero_grad, optimizer)
    unscaled_by_the_scaler(optimizer)
    setattr(step, SCHEDULER_MARK, True)
    optimizer.step = types.MethodType(step, optimizer)


def restore(optimizer: torch.optim.SGD, state: ThreePCState) -> None:
    """Read the rescaling c of ``.grad`` since the round (``adam.rescaling``), take it into every
    bucket's memory (``MomentumCorrectedEF14.clip``), and put the agreed g^t back in ``.grad``."""
    found = state.directions()
    stepped = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None and id(p) in found]
    factor, edited = rescaling(state, stepped, found)
    zeroed = {id(p): p.grad == 0 for p in edited}  # the user's zeros (masks) in .grad: kept in g^t
    factor = 1.0 if factor is None or abs(factor - 1.0) < UNSCALED else factor
    if factor < 1.0 and math.frexp(factor)[0] == 0.5 and state.scaler is None:  # exactly 2^-k: not a clipping
        warnings.warn(f"ef14_mc told its SGD: .grad was rescaled by exactly {factor:g} since the round, which it "
                      "takes for a clipping factor, applied one round late (this step is 1/factor too long). A "
                      "GradScaler's unscale_? Pass it: register(..., scaler=scaler). A division for gradient "
                      "accumulation? Scale the loss instead", RuntimeWarning, stacklevel=3)
    corrected = [b for b in state.buckets if isinstance(b.worker, MomentumCorrectedEF14)]
    # every round dense: .grad held the mean gradient on every rank, so every rank read this c
    agreed = bool(corrected) and all(b.worker.dense_round for b in corrected)
    with torch.no_grad():
        for bucket in corrected:
            bucket.worker.clip(factor, bucket.server if agreed else None)
        for p in stepped:
            p.grad.copy_(shaped(found[id(p)], p))
            if id(p) in zeroed:
                p.grad.masked_fill_(zeroed[id(p)], 0.0)
