"""Optimizer-aware mode for Adam and AdamW: ``register(ddp, optimizer=opt)``.

The hook sends the momentum of Adam-normalised gradients (``compressors.mechanisms.adam_normalized``:
each rank divides its gradient by the root of its own second moment and keeps the momentum of
that direction, bias-corrected, which the mechanism compresses: 1-bit Adam's compressed
momentum), and ``opt.step`` becomes the linear rest of AdamW's step, on the aggregate g the
ranks agreed on (Kingma & Ba 2015, Alg. 1; Loshchilov & Hutter 2019, Alg. 2):

    x <- x (1 - lr wd) - lr g

(``AdamNormalized(momentum=False)``: the ranks send the directions and the step keeps their
momentum, m <- beta1 m + (1 - beta1) g, x <- x (1 - lr wd) - lr m / (1 - beta1^t).) ``exp_avg``
holds m = g (1 - beta1^t) in the first case, so that both keep one checkpoint format.

The user keeps their optimizer object, its param groups (lr, betas, weight_decay) and any LR
scheduler, created before or after ``register``. The step reads g from the hook, not from
``.grad``, except the zeros the user wrote there (a pruning mask: ``rescaling`` finds the
parameters whose ``.grad`` changed other than by the common factor; a ``.grad`` of zeros only is
no edit, as DDP leaves one for an unused parameter). Gradient clipping: the hook leaves g in
``.grad`` rescaled to each rank's estimate of the mean gradient's norm
(``AdamNormalized.presented``), so ``clip_grad_norm_(params, tau)`` returns that estimate and
scales ``.grad`` by c = min(1, tau / it); the step reads c back as the
median over parameters of the ratio of ``.grad``'s norm to what the hook left there
(``follow_clipping``: parameters without a gradient, e.g. unused ones, do not count), and the
next round's moments see gradients scaled by the median of the last three c over c_0, the
first step's (``adam_normalized``: AdamW on clipped gradients, one round late). Any uniform
rescaling of ``.grad`` is followed so: an untold GradScaler's ``unscale_`` too, which undoes its
scale S one round late; ``clip_grad_value_``, or a clip of some of the parameters, counts as the
median parameter's rescaling. ``.grad`` and what ``clip_grad_norm_`` returns are each rank's own
estimate (they differ a little between ranks; the parameters do not): a decision taken on them
must be agreed by the user, e.g. by an all_reduce.
A step whose ``.grad`` holds inf/NaN (a round the hook flagged on every rank, see
``ThreePCState(nonfinite=...)``) leaves the parameters and moments as they were, on every rank.

GradScaler: pass it too, ``register(ddp, optimizer=opt, scaler=scaler)``. The hook runs inside
``backward()``, before ``unscale_``; told the scaler, it divides each bucket by the current scale
first, so the moments see the gradient as torch's AdamW does (tests/test_adam.py). Untold, its
first round normalises S grad, and each later round (S_0 / S) S grad, the rescaling the step reads
off ``.grad`` after ``unscale_``: a constant S_0 cancels (except that eps acts as eps / S_0), and a
change of S (growth, back-off after an overflow) skews one round.

Checkpoints: ``opt.state_dict()`` is torch AdamW's state at rest (``exp_avg`` in gradient units,
``exp_avg_sq`` from the hook's second moment; the mode's normalised momentum rides along), so a
plain AdamW resumes from it; ``opt.load_state_dict`` takes either kind (``_exported``,
``imported`` below).

SGD (with or without momentum, Nesterov) needs no change: ``register`` then registers the plain
hook. Other optimizers raise, naming the choices.
"""
from __future__ import annotations

import functools
import math
import statistics
import sys
import types
import warnings
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from compressors import EF14, Mechanism, kernels
from compressors.core.mechanism import all_finite
from compressors.mechanisms.adam_normalized import (MOMENTS, VELOCITY, AdamNormalized, Clipping, debiased,
                                                   debiasing, second_moment)

from .memory_order import shaped
from .state import ThreePCState

SCHEDULER_MARK = "_wrapped_by_lr_sched"  # torch's LR schedulers wrap opt.step unless it carries this
# two rounds before a step without accumulating: a step skipped on purpose
SKIPPED_STEP_HINT = ("; after a step skipped on purpose, clear the gradients with optimizer.zero_grad() "
                     "(model.zero_grad() does not tell the hook that the round was dropped)")
# what the errors of a step after several synchronised backward passes advise: DDP decides at the forward whether the
# backward synchronises, so a no_sync() around the backward alone changes nothing
ACCUMULATE = ("Run every forward and backward before the last one inside `with ddp.no_sync():` (DDP decides at the "
              "forward whether a backward synchronises), or sum the losses into one backward (a GAN discriminator's "
              "real and fake batches)")


@dataclass(frozen=True)
class AdamSettings:
    """The hook's half of Adam: the moments' decays and the denominator's epsilon."""

    betas: tuple[float, float]
    eps: float


def unwrapped(optimizer: torch.optim.Optimizer, strict: bool = True) -> torch.optim.Optimizer:
    """The torch optimizer inside a framework's wrapper (Accelerate's ``AcceleratedOptimizer``
    keeps it in ``.optimizer``, Lightning's ``LightningOptimizer``, whose class it makes a
    subclass of the wrapped one's, in ``._optimizer``; both call its ``step``), else
    ``optimizer`` itself. ``strict``: a ValueError for a wrapper that would undo the Adam mode
    (``refusal``)."""
    while True:
        refused = refusal(optimizer) if strict else None
        if refused:
            raise ValueError(refused)
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer) or inner is optimizer:
            return optimizer
        optimizer = inner


def refusal(wrapper: torch.optim.Optimizer) -> str | None:
    """Why ``wrapper`` (one layer of a framework's wrapping) would undo the Adam mode, if it would."""
    if hasattr(wrapper, "_optimizer_original_step_method"):
        return ("this optimizer's wrapper (Accelerate's, with a GradScaler) puts back the step method it saw when it "
                "was built after every step, undoing the Adam mode's: tell the hook the optimizer before preparing "
                "it: model = accelerator.prepare(model); register(model, optimizer=opt, scaler=accelerator.scaler); "
                "opt = accelerator.prepare(opt)")
    return None


def sharded(optimizer: torch.optim.Optimizer) -> str | None:
    """Why the hook cannot be told ``optimizer`` if it shards its state across the ranks (torch's
    ``ZeroRedundancyOptimizer``, ZeRO stage 1), else None. (Looked up where a user's import put it:
    importing ``torch.distributed.optim`` scripts its functional optimizers, 66 deprecation warnings.)"""
    zero = getattr(sys.modules.get("torch.distributed.optim"), "ZeroRedundancyOptimizer", None)
    if zero is None or not isinstance(optimizer, zero):
        return None
    inner = type(optimizer.optim).__name__
    return (f"a ZeroRedundancyOptimizer shards the optimizer across the ranks (each rank's {inner} steps its share "
            "of the parameters), and the Adam mode and momentum correction need one optimizer stepping every "
            "parameter on every rank")


def adam_settings(optimizer: torch.optim.Optimizer) -> AdamSettings | None:
    """``optimizer``'s (betas, eps) if it is an Adam or AdamW this mode supports; None for SGD;
    otherwise a ValueError naming what to change."""
    kind = type(optimizer).__name__
    if isinstance(optimizer, torch.optim.SGD):
        return None
    if sharded(optimizer):
        raise ValueError(f"register(..., optimizer=) cannot take this optimizer: {sharded(optimizer)}. Pass "
                         "optimizer=None: the hook then compresses raw gradients, which ZeroRedundancyOptimizer steps")
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        raise ValueError(f"register(..., optimizer=) supports torch.optim.Adam, AdamW and SGD; got {kind}. "
                         "Pass optimizer=None to compress the raw gradient")
    groups = optimizer.param_groups
    for flag in ("amsgrad", "maximize", "differentiable"):
        if any(g.get(flag) for g in groups):
            raise ValueError(f"register(..., optimizer=) does not support {kind}({flag}=True); build the optimizer "
                             f"without it, or pass optimizer=None")
    if isinstance(optimizer, torch.optim.Adam) and not isinstance(optimizer, torch.optim.AdamW) and \
            any(g["weight_decay"] and not g.get("decoupled_weight_decay") for g in groups):
        raise ValueError("register(..., optimizer=) applies weight decay decoupled, as AdamW does; Adam's "
                         "weight_decay adds wd * x to the gradient before normalisation. Use torch.optim.AdamW "
                         "(or Adam(decoupled_weight_decay=True)), or weight_decay=0")
    return AdamSettings(*live_settings(optimizer))


def live_settings(optimizer: torch.optim.Optimizer) -> tuple[tuple[float, float], float]:
    """The (betas, eps) every param group of ``optimizer`` has now (a scheduler may move them
    between steps: OneCycleLR cycles beta1), or a ValueError if the groups differ."""
    settings = {(tuple(float(b) for b in g["betas"]), float(g["eps"])) for g in optimizer.param_groups}
    if len(settings) != 1:
        raise ValueError(f"register(..., optimizer=) needs one (betas, eps) for every param group (the hook "
                         f"normalises whole DDP buckets); the groups have {sorted(settings)}")
    return settings.pop()


def normalized(mechanism: Mechanism, settings: AdamSettings, optimizer: torch.optim.Optimizer) -> AdamNormalized:
    """``mechanism`` in the Adam mode, whose rounds read ``optimizer``'s current (betas, eps) and
    follow its step's gradient clipping (``attach``); an EF14 also carries its error across the
    optimizer's learning-rate changes (``rate_of``)."""
    if isinstance(mechanism, EF14):
        mechanism.rate = rate_of(optimizer)
    return AdamNormalized(mechanism, settings.betas, settings.eps, follow=functools.partial(live_settings, optimizer),
                          clipping=Clipping())


def rate_of(optimizer: torch.optim.Optimizer) -> functools.partial:
    """What a round calls for the learning rate: the first param group's (``EF14.carry`` carries
    the error by lr_{t-1} / lr_t in update units; a scheduler scales every group alike)."""
    return functools.partial(_first_rate, optimizer)


def _first_rate(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def check_attachable(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """A ValueError if ``optimizer`` holds parameters ``model`` does not, or ``model`` has trainable
    parameters ``optimizer`` does not hold: told the optimizer, the hook writes what its step
    reads into every bucket (Adam-normalised aggregates; SGD's rescaled g^t, ``ddp_hooks.sgd``),
    which another optimizer would take for gradients (before anything is registered)."""
    owned = {id(p) for p in model.parameters()}
    foreign = [i for i, g in enumerate(optimizer.param_groups) for p in g["params"] if id(p) not in owned]
    if foreign:
        raise ValueError(f"the optimizer holds parameters (in param groups {sorted(set(foreign))}) that the DDP "
                         "model does not: the hook's directions cover only the model's parameters; give the "
                         "optimizer the DDP model's parameters")
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    missing = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in held]
    if missing:
        raise ValueError(f"the DDP model has trainable parameters the optimizer does not hold ({missing[:3]}"
                         f"{', ...' if len(missing) > 3 else ''}): told the optimizer, the hook leaves what its step "
                         "reads (Adam-normalised directions, or an SGD's rescaled momentum increments), not gradients, "
                         "in every parameter's .grad, which another optimizer (or none) would misread. Give this "
                         "optimizer every trainable parameter, freeze the others (requires_grad=False) before "
                         "wrapping the model in DDP, or pass optimizer=None")


UNSCALED = 1e-3  # a rescaling within this fraction of 1 is none
# a parameter whose rescaling differs from the median by more than this fraction was edited: float64 norms of
# fp32 gradients agree to about 1e-7, of fp16/bf16 ones (rounded after the rescaling) to about 1e-3
EDITED = {torch.float32: 1e-5, None: 2e-3}
RECENT = 3  # the factor follows the median of the last RECENT steps' rescalings


def rescaling(state: ThreePCState, params: list[Tensor], directions: dict[int, Tensor]
              ) -> tuple[float | None, list[Tensor]]:
    """The rescaling r the user's step applied to ``.grad``: the median, over ``params`` with a
    non-zero ``.grad``, of the ratio of its norm to that of what the hook left there (the
    parameter's slice of the aggregate, ``directions``, times its unit's ``shown``, rounded to
    ``.grad``'s dtype as the bucket rounded it; norms from float64 sums of squares,
    ``kernels.abs_moments``: fp32 norms of a 512 x 1024 weight and of the same values scaled
    disagreed by 2e-5, which took it for an edit); None if no parameter tells. Also the
    parameters whose ``.grad`` the user changed otherwise (masked: a ratio that is not r within
    ``EDITED``), whose zeros the step then keeps (a pruning mask). A ``.grad`` of zeros only is
    no edit: DDP leaves one for a parameter no rank used (``find_unused_parameters``)."""
    shown = {p: b.worker.shown for b in state.buckets if getattr(b.worker, "shown", None) is not None
             for p in b.params}
    told, factors, norms = [], [], []  # norms stay on the device until one transfer (a GPU syncs once)
    for p in params:
        if id(p) in shown:
            d, scale = directions[id(p)], shown[id(p)]
            told.append(p)
            if p.grad.dtype == d.dtype:
                factors.append(scale)
                norms.append(_squares(d))
            else:
                factors.append(1.0)
                norms.append(_squares(d.mul(scale).to(p.grad.dtype)))
            norms.append(_squares(p.grad))
    if not factors:
        return None, []
    values = torch.stack(norms).sqrt().tolist()
    ratios: list[float | None] = []
    for factor, left, now in zip(factors, values[0::2], values[1::2]):
        left *= factor
        # a .grad that is all zeros tells nothing: DDP leaves an unused parameter's so (find_unused_parameters)
        ratios.append(now / left if left > 0.0 and now > 0.0 and math.isfinite(now / left) else None)
    found = [r for r in ratios if r is not None]
    if not found:
        return None, []
    median = statistics.median(found)
    edited = [p for p, r in zip(told, ratios)
              if r is not None and abs(r - median) > EDITED.get(p.grad.dtype, EDITED[None]) * median]
    return median, edited


def _squares(x: Tensor) -> Tensor:
    """sum x_i^2 of ``x`` as a float64 scalar on its device: on a CPU in one pass without
    temporaries (``kernels.abs_moments``), elsewhere torch's float64 norm (``abs_moments``' CUDA
    path makes three sums and six launches where one is needed)."""
    if x.device.type != "cpu":
        return torch.linalg.vector_norm(x, dtype=torch.float64).square()
    return kernels.abs_moments(x if x.is_contiguous() else x.contiguous())[2]


def follow_clipping(clipping: Clipping, state: ThreePCState, params: list[Tensor], directions: dict[int, Tensor]
                    ) -> list[Tensor]:
    """The next round's gradients are multiplied by the median of the last ``RECENT`` rescalings
    r (``rescaling``) over r_0, the first step's. Returns the parameters whose ``.grad`` the user
    changed otherwise."""
    ratio, edited = rescaling(state, params, directions)
    if ratio is None:
        return edited
    if clipping.reference is None:
        clipping.reference = ratio
    clipping.recent = [*clipping.recent, ratio][-RECENT:]
    factor = statistics.median(clipping.recent) / clipping.reference
    clipping.factor = 1.0 if abs(factor - 1.0) < UNSCALED else factor
    return edited


HANDLES = "_threepc_handles"  # the optimizer's checkpoint hooks from the last attach


def _initialising(optimizer: torch.optim.Optimizer, stepped: list[Tensor]) -> bool:
    """A step that only sets up the state (torch.distributed.checkpoint's ``get_optimizer_state_dict``
    and ``set_optimizer_state_dict`` step a fresh optimizer at lr 0 on zero gradients, to build the
    template a checkpoint loads into): the optimizer has no state, every lr is 0 and every gradient
    is zero. Sets torch AdamW's per-parameter state (step 0, zero moments, so that the template
    carries every key a checkpoint of the mode holds) and moves nothing."""
    if optimizer.state or any(float(g["lr"]) != 0.0 for g in optimizer.param_groups) or \
            any(p.grad.any() for p in stepped):
        return False
    for p in stepped:
        optimizer.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                              "exp_avg_sq": torch.zeros_like(p)}
    return True


def started(optimizer: torch.optim.Optimizer, closure) -> object:  # noqa: ANN001 - torch's closure
    """What a replaced step does first: the closure's loss (None without one), evaluated with
    gradients on as torch's steps do, and the mark LR schedulers check."""
    loss = None
    if closure is not None:
        with torch.enable_grad():
            loss = closure()
    optimizer._opt_called = True
    return loss


def unscaled_by_the_scaler(optimizer: torch.optim.Optimizer) -> None:
    """A fused optimizer tells GradScaler that its step unscales (and skips on inf) by itself, so
    the scaler would hand it scaled gradients; a replaced step reads ``.grad`` before torch's, so
    the scaler unscales and skips for it, as for any optimizer."""
    optimizer._step_supports_amp_scaling = False


DROPPED = -1  # ``ThreePCState.warned``'s entry for the dropped-round warning (its others are unit sizes)


def dropped(state: ThreePCState, rounds: int) -> None:
    """Warn once per state when ``zero_grad()`` clears rounds no step applied: they entered the
    hook's memories all the same (the hook cannot tell a backward whose gradients are thrown away)."""
    if rounds > 0 and DROPPED not in state.warned:
        state.warned.add(DROPPED)
        warnings.warn("threepc: zero_grad() clears a synchronised backward that no optimizer.step() applied; its "
                      "round entered the hook's memories all the same (error feedback, Adam's moments). To throw "
                      "gradients away, run that forward and backward under `with ddp.no_sync():` (DDP decides at the "
                      "forward whether a backward synchronises; a GAN's generator step through the discriminator: "
                      "`with netD.no_sync(): loss_G = criterion(netD(fake), real_label); loss_G.backward()`); a step "
                      "skipped on purpose now and then is fine (warned once)", RuntimeWarning, stacklevel=3)


def attach(optimizer: torch.optim.Optimizer, state: ThreePCState, note: str = "") -> None:
    """Make ``optimizer.step`` AdamW's linear step on ``state``'s aggregate directions, and its
    checkpoints torch AdamW's (``_exported``, ``imported``); a second attach replaces the first.
    ``note``: what the step's errors add (how the mode was chosen)."""
    applied = {"at": state.committed_iterations}  # the hook's committed iterations at the last step or zero_grad
    sends_momentum = isinstance(state.mechanism, AdamNormalized) and state.mechanism.momentum
    clipping = state.mechanism.clipping if isinstance(state.mechanism, AdamNormalized) else None

    def step(self: torch.optim.Optimizer, closure=None):  # noqa: ANN001, ANN202 - torch's signature
        loss = started(self, closure)
        stepped = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not stepped or not all_finite(*(p.grad for p in stepped)):  # nothing to step (as torch's AdamW), or flagged
            return loss
        rounds, applied["at"] = state.committed_iterations - applied["at"], state.committed_iterations
        if rounds == 0 and _initialising(self, stepped):
            return loss
        if rounds == 0:
            raise RuntimeError("optimizer.step() without a synchronised backward since the last step or zero_grad(): "
                               "in the Adam mode the step applies the ranks' aggregate of that backward, and there "
                               "is none (a second step, or a backward only under ddp.no_sync()), or DDP did not "
                               "finish reducing it: a parameter that got no gradient needs "
                               "find_unused_parameters=True in DistributedDataParallel (with static_graph=True, the "
                               "graph must stay the same every iteration)" + note)
        if rounds > 1:
            raise RuntimeError(f"optimizer.step() follows {rounds} synchronised backward passes: in the Adam mode each "
                               "is a round of the hook (its moments count it, and .grad holds its normalised "
                               "aggregate, to which another backward adds a raw gradient), so only the last would "
                               "be applied. " + ACCUMULATE + SKIPPED_STEP_HINT + note)
        found = state.directions()
        directions = {id(p): found.get(id(p)) for p in stepped}
        lacking = [state.name(p) for p, d in directions.items() if d is None]
        if lacking:  # before anything moves
            raise RuntimeError(f"threepc has no direction for {lacking[0]}: call "
                               "optimizer.step() after a backward() through the DDP model. If it is "
                               "set, the parameter is not in DDP's buckets: it did not require grad "
                               "when DDP wrapped the model (frozen then), so DDP never synchronises "
                               "it; wrap the model in DDP again after unfreezing" + note)
        edited = follow_clipping(clipping, state, stepped, directions) if clipping is not None else []
        zeroed = {id(p): p.grad == 0 for p in edited}  # the user's zeros (masks) in .grad: kept by the step
        with torch.no_grad():
            for group in self.param_groups:
                beta1, lr, wd = float(group["betas"][0]), float(group["lr"]), float(group["weight_decay"])
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    moments = self.state[p]
                    if "exp_avg" not in moments:
                        moments["step"] = torch.tensor(0.0)
                        moments["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    d = shaped(directions[id(p)], p)
                    if id(p) in zeroed:
                        d = d.masked_fill(zeroed[id(p)], 0.0)
                    moments["step"] += 1
                    m, correction = moments["exp_avg"], 1.0 - beta1 ** float(moments["step"])
                    p.mul_(1.0 - lr * wd)
                    if sends_momentum:  # d is the bias-corrected momentum: applied as it is (one rounding)
                        p.add_(d, alpha=-lr)
                        torch.mul(d, correction, out=m)  # what a checkpoint holds
                    else:
                        m.lerp_(d.to(m.dtype), 1.0 - beta1)
                        p.add_(m, alpha=-lr / correction)
        return loss

    def zero_grad(self: torch.optim.Optimizer, set_to_none: bool = True) -> None:
        """torch's, and the rounds since are the ones the next step counts (a step skipped on
        purpose, or the rounds ``ddp.join()`` ran for a rank out of inputs, are left behind)."""
        dropped(state, state.committed_iterations - applied["at"])
        applied["at"] = state.committed_iterations
        type(self).zero_grad(self, set_to_none)

    optimizer.zero_grad = types.MethodType(zero_grad, optimizer)
    unscaled_by_the_scaler(optimizer)
    for handle in getattr(optimizer, HANDLES, ()):
        handle.remove()
    setattr(optimizer, HANDLES, (optimizer.register_state_dict_post_hook(functools.partial(_exported, state=state)),
                                 optimizer.register_load_state_dict_pre_hook(functools.partial(imported,
                                                                                               state=state))))

    # torch's own step runs the optimizer's step hooks (register_step_pre_hook/_post_hook, global
    # ones) inside a profiler range: the same wrapper, so that hooks users registered still run
    hooked = torch.optim.Optimizer.profile_hook_step(step)
    setattr(hooked, SCHEDULER_MARK, True)
    optimizer.step = types.MethodType(hooked, optimizer)


# -- checkpoints: torch's AdamW units at rest --------------------------------------------------
# In the mode, ``exp_avg`` is the momentum of the agreed *normalised* directions. A state_dict
# holds torch AdamW's state instead (exp_avg in gradient units and exp_avg_sq, from the hook's
# second moment w_i), so a plain AdamW resumes from it (without the hook, or on one process), and
# the mode's own momentum rides along under ``NORMALISED`` for a bit-for-bit resume.
NORMALISED, AT_STEP = "threepc_exp_avg", "threepc_step"  # the mode's momentum, and the step it is of
# the mode's ``Clipping``, in the first exported parameter's state beside NORMALISED (torch.distributed.
# checkpoint keeps per-parameter keys and drops top-level ones; ``imported`` still reads a top-level one,
# where checkpoints before kept it)
CLIPPING = "threepc_clipping"


def _pairs(state_dict: dict) -> list[tuple[int, dict, dict]]:
    """(index, param group, per-parameter state) of a state_dict's parameters that have a state."""
    groups = {i: g for g in state_dict["param_groups"] for i in g["params"]}
    return [(i, groups[i], s) for i, s in state_dict["state"].items()]


def _denominator(exp_avg_sq: Tensor, step: Tensor, group: dict) -> Tensor:
    """torch AdamW's sqrt(exp_avg_sq / (1 - beta2^step)) + eps."""
    beta2 = float(group["betas"][1])
    correction = 1.0 - beta2 ** float(step) if float(step) > 0 else 1.0
    return (exp_avg_sq.double() / correction).sqrt() + float(group["eps"])


def _exported(optimizer: torch.optim.Optimizer, state_dict: dict, *, state: ThreePCState) -> dict:
    """state_dict post-hook: exp_avg_sq = w_i (1 - beta2^t) and exp_avg = a normalised momentum
    times sqrt(w_i) + eps, so that torch's AdamW takes the step the mode would take next
    (m^ / (sqrt(v^) + eps) = the normalised momentum / (1 - beta1^t)). The normalised momentum:
    this rank's own u^_i (1 - beta1^t) when the ranks send momentum (uncompressed; the agreed g
    of one round carries that round's compression error), else the optimizer's. w_i: this
    rank's second moment (``second_moment``) from the hook's memory, or the exp_avg_sq a plain
    checkpoint brought (``imported``) for parameters the hook holds no moments of yet; with
    neither, the parameter's state is left empty (a plain AdamW starts it afresh). The hook's
    moments are of gradients over r_0 (``follow_clipping``), so w_i is exported times r_0^2."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    memory, mechanism = state.parameter_memory(), state.mechanism
    clipping = mechanism.clipping if isinstance(mechanism, AdamNormalized) else None
    reference = clipping.reference if clipping is not None and clipping.reference is not None else 1.0
    for index, group, s in _pairs(state_dict):
        if "exp_avg" not in s:
            continue
        p = params[index]
        fields, momentum = memory.get(id(p), {}), s["exp_avg"].double()
        if all(name in fields for name in MOMENTS) and isinstance(mechanism, AdamNormalized):
            w = shaped(second_moment(*(fields[name] for name in MOMENTS), mechanism.betas, state.world_size(),
                                     mechanism.mean_of_ranks), p) * reference ** 2
            beta2, step = float(group["betas"][1]), float(s["step"])
            exp_avg_sq = w * (1.0 - beta2 ** step if step > 0 else 1.0)
            if VELOCITY in fields:  # u^_i (1 - beta1^t)
                beta1 = mechanism.betas[0]
                u_hat = shaped(debiased(fields[VELOCITY], beta1, fields["adam_k"]), p)
                momentum = u_hat * debiasing(beta1, max(step, 1.0))
        elif "exp_avg_sq" in s:
            exp_avg_sq = s["exp_avg_sq"]
        else:
            state_dict["state"][index] = {}
            continue
        exp_avg = (momentum * _denominator(exp_avg_sq, s["step"], group)).to(s["exp_avg"].dtype)
        state_dict["state"][index] = {**s, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq.to(s["exp_avg"].dtype),
                                      NORMALISED: s["exp_avg"].clone(), AT_STEP: float(s["step"])}
        if clipping is not None:
            state_dict["state"][index][CLIPPING] = asdict(clipping)
            clipping = None  # once
    return state_dict


def imported(optimizer: torch.optim.Optimizer, state_dict: dict, *, state: ThreePCState | None = None) -> dict:
    """load_state_dict pre-hook: the mode's own momentum if the checkpoint carries it for its
    current step (the mode saved it; a plain AdamW that trained on from it has moved on), else
    the exp_avg divided by sqrt(v^) + eps (the normalised momentum that continues its step when
    the optimizer keeps the momentum; when the ranks send it, their moments restart and the
    first step overwrites it). exp_avg_sq is kept for ``_exported``; the clipping it saved is
    the mode's again if saved at the checkpoint's step, like the momentum (a plain checkpoint, or
    one a plain AdamW trained on from, leaves it as it is: the next step reads it)."""
    clipping, current = state_dict.get(CLIPPING), state_dict.get(CLIPPING) is not None
    mechanism = state.mechanism if state is not None else None
    state_dict = {**state_dict, "state": dict(state_dict["state"])}
    for index, group, s in _pairs(state_dict):
        s = dict(s)
        saved, at = s.pop(NORMALISED, None), s.pop(AT_STEP, None)
        fresh = at is not None and "step" in s and at == float(s["step"])  # saved by the mode at this step
        if CLIPPING in s:  # a plain AdamW that trained on from the mode's checkpoint carries it stale
            clipping, current = s.pop(CLIPPING), fresh
        if saved is not None and fresh:
            s["exp_avg"] = saved
        elif "exp_avg" in s and "exp_avg_sq" in s:
            s["exp_avg"] = (s["exp_avg"].double() / _denominator(s["exp_avg_sq"], s["step"], group)
                            ).to(s["exp_avg"].dtype)
        state_dict["state"][index] = s
    if current and isinstance(mechanism, AdamNormalized) and mechanism.clipping is not None:
        for name, value in clipping.items():
            setattr(mechanism.clipping, name, value)
    return state_dict
