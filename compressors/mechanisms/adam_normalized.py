"""Adam's normalisation before compression: any mechanism, run on each worker's Adam-scaled
gradient instead of its raw gradient (the hook's half of ``ddp_hooks.adam``).

Why. Adam divides each coordinate by the root of its own second moment. Error feedback over
Top-K delivers a coordinate rarely, as one pulse that sums the rounds it waited; an Adam that
sees the pulses normalises each one by its own size, so the coordinate moves about
sqrt(rounds waited) times less than under dense Adam (measured: EF14 at Top-K 1% is 1.2 pp
below allreduce on a9a and 3.1 pp on digits under AdamW, benchmarks/results/accuracy_adam.md).
1-bit Adam (Tang et al. 2021, Sec. 3) meets the same problem and freezes the variance after a
dense warm-up; here each worker normalises its own gradient with its own second moment, so
the compressed messages are already in the units of Adam's step and the aggregate is applied
linearly (momentum and decoupled weight decay only, ``ddp_hooks.adam``). Worker i, round t
(moments start at 0 and are bias-corrected, Kingma & Ba 2015, Alg. 1):

    m_i <- beta1 m_i + (1 - beta1) grad_i,     v_i <- beta2 v_i + (1 - beta2) grad_i^2,     k_i <- k_i + 1
    m^_i = m_i / (1 - beta1^k_i),   v^_i = v_i / (1 - beta2^k_i)
    s_i  = min(m^_i^2, v^_i),   w_i = s_i + (v^_i - s_i) / n     (``mean_of_ranks``; else w_i = v^_i)
    d_i  = grad_i / (sqrt(w_i) + eps)
    u_i <- beta1 u_i + (1 - beta1) d_i,   u^_i = u_i / (1 - beta1^k_i)      (``momentum``)
    the inner mechanism runs on u^_i (EF14: g = (1/n) sum_i C(e_i + u^_i)); momentum=False: on d_i

``momentum`` (the default) is 1-bit Adam's choice (Tang et al. 2021, Alg. 1: error feedback on
the compressed *momentum*): the mean of the u^_i is the momentum of the mean direction, so the
aggregate g is Adam's bias-corrected momentum and the optimizer applies it as it comes
(``ddp_hooks.adam``); with momentum=False the ranks send d_i and the optimizer keeps the
momentum of the agreed directions. Uncompressed the two are the same step. Compressed, the
error feedback of the first smooths what the compressor drops before the step sees it, where
the second filters it through the optimizer's momentum (measured, EF14 over scaled signs,
AdamW, before the mode followed clipping: the byte-level LM at +0.96% against +2.5% at 2 ranks,
+1.15% against +3.0% at 4, benchmarks/results/accuracy_momentum.md).

k_i counts the rounds folded into the moments, per coordinate, in the memory: the bias
corrections follow the moments through rounds the hook rolled back (a step GradScaler or
``nonfinite`` skipped: torch's AdamW does not count it either), re-bucketing and checkpoints,
where the iteration counter t would not. A dense round continues the moments the instance holds
(the hook seeds a warm-up round's worker with its parameters' memory, ``carries_memory``), so
``warmup_steps`` dense rounds are dense Adam rounds.

Gradient clipping (``clipping``, a ``Clipping`` shared by the workers and the optimizer's step):
AdamW after ``clip_grad_norm_(params, tau)`` runs on c_t grad with c_t = min(1, tau / ||g_t||),
g_t the n-rank mean gradient of the whole model. Each worker estimates its unit's share of
||g_t||^2 from what it has (``mean_norm2``), and the hook leaves the aggregate in ``.grad`` rescaled
to the root of that estimate (``presented``), so the user's clipping sees a gradient's norm and
scales ``.grad`` by c_t; the step reads c_t back (``ddp_hooks.adam``) and round t + 1 runs on
(median(c_{t-2}, c_{t-1}, c_t) / c_0) grad_i: the moments see clipped gradients one round late
(the hook normalises each bucket before the last is computed), through a median, so that a
spike, which passes unclipped (Adam's normalisation bounds it), does not shrink the next,
ordinary round instead; relative to the first round's c_0, which that round could not apply
(Adam's step does not change when every gradient is scaled by one constant, except that eps
acts as c_0 eps). Measured, the byte-level LM under AdamW with clip 1.0: allreduce AdamW gains
2.1% of validation loss from its clipping at 4 ranks; the mode, which ignored it, went from
+1.15% to +0.10% (benchmarks/results/accuracy_clipping.md).

v^_i estimates E[grad_i^2] of one rank's minibatch; allreduce AdamW sees the n-rank mean, whose
second moment is mu^2 + sigma^2 / n when the ranks' minibatches are independent. ``w_i`` is that
estimate (m^_i^2 for mu^2): without it noisy coordinates take up to sqrt(n) smaller steps
(measured: digits AdamW at 4 ranks, +1.6 pp without, +0.6 pp with). With one worker (or
``mean_of_ranks=False``, identical workers), a dense inner mechanism and beta1 = 0, the step
x <- x (1 - lr wd) - lr g is AdamW's step exactly (tests/test_adam.py). No extra bytes are sent.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from functools import cache

import torch
from torch import Tensor

from .. import kernels
from ..core.compressor import ROUND0, Compressor
from ..core.mechanism import Mechanism, flat
from ..core.memory import Memory, reusable
from ..core.payload import PartSpec, Payload
from ..core.rounds import Round


Settings = Callable[[], tuple[tuple[float, float], float]]  # the live (betas, eps), e.g. an optimizer's
MOMENTS = ("adam_m", "adam_v", "adam_k")  # m_i, v_i, k_i's memory fields (EF21-SGDM has a v_i of its own)
VELOCITY = "adam_u"  # u_i's memory field, the momentum of d_i (``momentum=True``)


@dataclasses.dataclass
class Clipping:
    """The factor that multiplies each round's gradient before the moments: the median of the
    rescalings the user's last three steps applied (``recent``), relative to the first step's
    (``reference``); ``ddp_hooks.adam.follow_clipping`` sets them."""

    factor: float = 1.0
    reference: float | None = None
    recent: list[float] = dataclasses.field(default_factory=list)


@cache
def with_variance(inner: type[Memory], fields: tuple[str, ...] = MOMENTS) -> type[Memory]:
    """``inner``'s memory plus the worker's moments m_i, v_i, their round count k_i and, when
    ``fields`` names it, the momentum u_i of its directions (one dataclass per inner type and
    fields)."""
    taken = {f.name for f in dataclasses.fields(inner)}.intersection(fields)
    if taken:
        raise TypeError(f"{inner.__name__} already has memory fields {sorted(taken)}: Adam's moments need their own")
    suffix = "AndMomentsAndVelocity" if VELOCITY in fields else "AndMoments"
    return dataclasses.make_dataclass(f"{inner.__name__}{suffix}", [(name, Tensor) for name in fields],
                                      bases=(inner,))


def debiasing(beta: float, rounds: Tensor | float) -> Tensor | float:
    """1 - beta^rounds (Adam's bias correction after ``rounds`` rounds, per coordinate or one
    number), as -expm1(rounds log beta): no cancellation for beta near 1."""
    if beta == 0.0:
        return 1.0
    if isinstance(rounds, float):
        return -math.expm1(rounds * math.log(beta))
    return torch.expm1(rounds * math.log(beta)).neg_()


def uniform(k: Tensor) -> float | None:
    """The round count every coordinate of ``k`` holds, or None when they differ (units joined
    from tensors with other histories); 0 for an empty k."""
    if k.numel() == 0:
        return 0.0
    low, high = torch.aminmax(k)
    return float(low) if bool(low == high) else None


def _next_count(rounds: float) -> float:
    """rounds + 1 rounded to fp32, as k (fp32) holds it: past 2^24 the count stops where k does."""
    return float(torch.tensor(rounds, dtype=torch.float32) + 1.0)


def corrections(betas: tuple[float, float], rounds: Tensor | float, device: torch.device) -> tuple[Tensor, Tensor]:
    """fp32 1 / (1 - beta1^k)^2 and 1 / (1 - beta2^k): one value, computed in float64, when every
    coordinate counts the same ``rounds`` (a float), else one per coordinate of the tensor k
    (computed in fp32)."""
    return tuple(torch.as_tensor(1.0 / debiasing(beta, rounds) ** power, dtype=torch.float32,
                                 device=device).reshape(-1) for beta, power in zip(betas, (2, 1)))


def checked(betas: tuple[float, float], eps: float) -> tuple[tuple[float, float], float]:
    """(betas, eps), or a ValueError unless 0 <= beta1, beta2 < 1 and eps >= 0."""
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas) or eps < 0.0:
        raise ValueError(f"Adam normalisation needs 0 <= beta1, beta2 < 1 and eps >= 0, got betas={betas}, eps={eps}")
    return tuple(betas), eps


def debiased(x: Tensor, beta: float, k: Tensor) -> Tensor:
    """x / (1 - beta^k) in float64, per coordinate, and 0 where no round was folded in (k = 0)."""
    k = k.double()
    return torch.where(k > 0, x.double() / torch.as_tensor(debiasing(beta, k)).clamp_min(1e-300), 0.0)


def second_moment(m: Tensor, v: Tensor, k: Tensor, betas: tuple[float, float], workers: int,
                  mean_of_ranks: bool = True) -> Tensor:
    """w_i, the bias-corrected second moment a round divides by (the module's formula, in float64,
    then fp32; 0 where no round was folded in): what torch's AdamW holds as
    exp_avg_sq / (1 - beta2^t) when a checkpoint leaves the Adam mode (``ddp_hooks.adam``)."""
    beta1, beta2 = betas
    v_hat = debiased(v, beta2, k)
    if not mean_of_ranks or workers <= 1:
        return v_hat.float()
    m_hat = debiased(m, beta1, k)
    s = torch.minimum(m_hat * m_hat, v_hat)
    return (s + (v_hat - s) / workers).float()


SAMPLE = 1 << 16  # about how many coordinates ``mean_norm2`` reads the moments of


def mean_norm2(g: Tensor, m: Tensor, v: Tensor, c1: Tensor, c2: Tensor, share: float) -> float:
    """This rank's estimate of ||(1/n) sum_i grad_i||^2 over the unit (``share`` = 1/n) from its
    gradient ``g`` and its moments just updated: ||g||^2 (r + (1 - r) / n), where r = sum_j s_j /
    sum_j v^_j with s_j = min(m^_j^2, v^_j) (c1 = 1 / (1 - beta1^k)^2, c2 = 1 / (1 - beta2^k)) is
    the share of the gradient's energy that the mean keeps (its noise averages down by n), read
    from every (numel / ``SAMPLE``)-th coordinate. A ratio of the moments, so earlier rounds'
    clipping factors cancel; with share = 1, ||g||^2."""
    total = float(torch.dot(g, g))  # fp32, no copy (a float64 reduction copies: 50x slower)
    if share == 1.0:
        return total
    every = max(1, m.numel() // SAMPLE)  # r is a ratio of sums over many coordinates: a strided sample
    m, v = m[::every], v[::every]
    c1, c2 = (c[::every] if c.numel() > 1 else c for c in (c1, c2))
    if c1.numel() == 1 and c2.numel() == 1:  # every coordinate counts the same rounds: min(m^2 c1 / c2, v) c2
        kept_sum, energy = float(torch.minimum(m.square().mul_(c1 / c2), v).sum()), float(v.sum())
    else:
        scaled = v.mul(c2)
        kept_sum, energy = float(torch.minimum(m.square().mul_(c1), scaled).sum()), float(scaled.sum())
    kept = kept_sum / energy if energy > 0.0 else 1.0  # no energy yet (v = 0: a gradient zero so far, or unsampled)
    kept = kept if math.isfinite(kept) else 1.0
    return total * (kept + (1.0 - kept) * share)


class AdamNormalized(Mechanism):
    """``inner`` on Adam-normalised gradients (``momentum``: on their momentum); memory: ``inner``'s
    plus m_i, v_i, k_i (``MOMENTS``) and u_i (``VELOCITY``). Everything else (payload, protocol,
    aggregate state) is ``inner``'s."""

    carries_memory = True  # init continues the moments the instance holds (ddp_hooks.state seeds them)

    def __init__(self, inner: Mechanism, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 mean_of_ranks: bool = True, momentum: bool = True, follow: Settings | None = None,
                 clipping: Clipping | None = None) -> None:
        """``follow``: where each round reads (betas, eps) instead, e.g. the optimizer's param groups,
        which a scheduler may change between rounds (OneCycleLR cycles beta1); ``clipping``: the
        gradient clipping to follow (``Clipping``). Spawned workers share both."""
        checked(betas, eps)
        self.inner, self._betas, self._eps, self.mean_of_ranks = inner, tuple(betas), eps, mean_of_ranks
        self.momentum, self.follow, self.clipping = momentum, follow, clipping
        self.norm2: float | None = None  # this round's estimate of the unit's ||g||^2 (``clipping``)
        self.shown: float | None = None  # what ``presented`` multiplied this round's aggregate by
        self.fields = (*MOMENTS, VELOCITY) if momentum else MOMENTS
        self.m: Tensor | None = None
        self.v: Tensor | None = None
        self.k: Tensor | None = None
        self.rounds: float | None = None  # what every coordinate of k holds, when known (else k is read)
        self.u: Tensor | None = None
        self._spare: tuple[Tensor, ...] | None = None  # last round's moments (``fields``): next round's buffers
        super().__init__(inner.compressor)

    def __repr__(self) -> str:
        return (f"AdamNormalized({self.inner!r}, betas={self.betas}, eps={self.eps}, "
                f"mean_of_ranks={self.mean_of_ranks}, momentum={self.momentum})")

    def checkpoint_name(self) -> str:
        """Without the betas and eps: the moments are valid under others (a scheduler moves them;
        torch's AdamW loads a state under any)."""
        return (f"AdamNormalized({self.inner.checkpoint_name()}, mean_of_ranks={self.mean_of_ranks}, "
                f"momentum={self.momentum})")

    def spawn(self) -> AdamNormalized:
        return AdamNormalized(self.inner.spawn(), self._betas, self._eps, self.mean_of_ranks, self.momentum,
                              self.follow, self.clipping)

    def _settings(self) -> tuple[tuple[float, float], float]:
        if self.follow is None:
            return self._betas, self._eps
        betas, eps = self.follow()
        return checked(tuple(float(b) for b in betas), float(eps))

    betas = property(lambda self: self._settings()[0], doc="(beta1, beta2) this round")
    eps = property(lambda self: self._settings()[1], doc="eps this round")

    # -- what the hook reads: the inner mechanism's declarations -------------------------------
    lazy = property(lambda self: self.inner.lazy)
    linear = property(lambda self: self.inner.linear)
    window = property(lambda self: self.inner.window)
    two_stage = property(lambda self: self.inner.two_stage)
    overwrites = property(lambda self: self.inner.overwrites)

    @property
    def written_in_place(self) -> frozenset[str]:
        """The inner mechanism's (all its fields when it does not say); the moments never are."""
        inner = self.inner.written_in_place
        return frozenset(f.name for f in dataclasses.fields(self.inner.memory_type)) if inner is None else inner

    @property
    def compressor(self) -> Compressor:
        return self.inner.compressor

    @compressor.setter
    def compressor(self, value: Compressor) -> None:
        self.inner.compressor = value

    @property
    def memory_type(self) -> type[Memory]:
        return with_variance(self.inner.memory_type, self.fields)

    def _moments(self) -> tuple[Tensor | None, ...]:
        return (self.m, self.v, self.k, self.u)[:len(self.fields)]

    @property
    def memory(self) -> Memory | None:
        if self.v is None:
            return None
        return self.memory_type(**self.inner.memory.tensors(), **dict(zip(self.fields, self._moments())))

    @memory.setter
    def memory(self, value: Memory | None) -> None:
        self._spare = None  # a restored memory may be the spare buffers
        self.rounds = None  # k from elsewhere (a rollback, a checkpoint, joined units): read it next round
        if value is None:
            self.inner.memory, self.m, self.v, self.k, self.u = None, None, None, None, None
            return
        tensors = value.tensors()
        self.m, self.v, self.k = (tensors.pop(name) for name in MOMENTS)
        self.u = tensors.pop(VELOCITY) if self.momentum else None
        self.inner.memory = self.inner.memory_type.of(tensors)

    # -- the worker: normalise, then the inner mechanism -------------------------------------
    def normalized(self, grad: Tensor, rnd: Round) -> Tensor:
        """What this round sends the inner mechanism: u^_i (``momentum``, one pass:
        ``kernels.adam_momentum``) or d_i (``kernels.adam_normalize``). Sets the moments to other
        tensors than the old ones, which stay a valid rollback; k_i is written as one value while
        every coordinate counts the same rounds (``rounds``), without reading it."""
        betas, eps = self._settings()
        (beta1, beta2), g = betas, flat(grad)
        raw, gain = g, self.clipping.factor if self.clipping is not None else 1.0
        if gain != 1.0:
            g = g * gain
        buffers = self._buffers(g)
        m_new, v_new, k_new = buffers[:3]
        if self.v is None:
            m = v = torch.zeros(g.numel(), device=g.device)
            rounds: float | None = 1.0
        else:
            m, v = self.m, self.v
            rounds = (self.rounds if self.rounds is not None else uniform(self.k))
            rounds = _next_count(rounds) if rounds is not None else None
        k = k_new.fill_(rounds) if rounds is not None else torch.add(self.k, 1.0, out=k_new)
        c1, c2 = corrections(betas, rounds if rounds is not None else k, g.device)
        share = 1.0 / rnd.workers if self.mean_of_ranks and rnd.workers > 1 else 1.0
        out = torch.empty(g.numel(), device=g.device)  # d or u^: new, the inner mechanism may keep it
        if self.momentum:
            u = self.u if self.u is not None else torch.zeros_like(out)
            kernels.adam_momentum(g, m, v, u, c1, c2, beta1, beta2, eps, share, out=(m_new, v_new, buffers[3], out))
        else:
            kernels.adam_normalize(g, m, v, c1, c2, beta1, beta2, eps, share, out=(m_new, v_new, out))
        self._spare = self._moments() if self.v is not None else None
        self.m, self.v, self.k, self.rounds = m_new, v_new, k, rounds
        if self.momentum:
            self.u = buffers[3]
        if self.clipping is not None:
            self.norm2 = mean_norm2(raw, m_new, v_new, c1, c2, share)
        return out

    def _buffers(self, g: Tensor) -> tuple[Tensor, ...]:
        """Where this round writes its moments: the round before last's tensors (no allocation,
        no page faults), unless they are gone or are the memory now (a rollback restored them)."""
        spare, self._spare = self._spare or (None,) * len(self.fields), None
        return tuple(reusable(t, g.numel(), g.device, busy=self._moments()) for t in spare)

    def init(self, grad: Tensor, rnd: Round = ROUND0) -> Payload:
        """The inner mechanism's dense round on u^_i (d_i). The moments continue from those this
        instance holds (a warm-up round the hook seeded); a spawned instance starts them at 0."""
        return self.inner.init(self.normalized(grad, rnd), rnd)

    def step(self, grad: Tensor, rnd: Round = ROUND0) -> Payload:
        return self.inner.step(self.normalized(grad, rnd), rnd)

    def presented(self, g: Tensor) -> float:
        """What rescales the aggregate ``g`` to this round's estimate of the mean gradient's norm
        (with ``clipping``): the user's clipping of ``.grad`` then sees a gradient's norm."""
        if self.clipping is None or self.norm2 is None:
            return 1.0
        held = math.sqrt(float(torch.dot(g, g)))
        self.shown = math.sqrt(self.norm2) / held if held > 0.0 and math.isfinite(held) else 1.0
        return self.shown

    def init_spec(self, numel: int) -> list[PartSpec]:
        return self.inner.init_spec(numel)

    def spec(self, numel: int, rnd: Round = ROUND0) -> list[PartSpec]:
        return self.inner.spec(numel, rnd)

    def summable(self, spec: Sequence[PartSpec]) -> bool:
        return self.inner.summable(spec)

    # -- the aggregate and the two-stage owner: the inner mechanism's -------------------------
    def start(self, payloads: Sequence[Payload], rnd: Round = ROUND0) -> dict[str, Tensor]:
        return self.inner.start(payloads, rnd)

    def begin(self, payloads: Sequence[Payload], rnd: Round = ROUND0) -> dict[str, Tensor]:
        return self.inner.begin(payloads, rnd)

    def aggregate(self, server: dict[str, Tensor], payloads: Sequence[Payload], rnd: Round = ROUND0) -> None:
        self.inner.aggregate(server, payloads, rnd)

    def fold(self, server: dict[str, Tensor], payloads: Sequence[Payload],
             rnd: Round = ROUND0) -> list[Payload] | None:
        return self.inner.fold(server, payloads, rnd)

    def chunks(self, numel: int, workers: int) -> list[tuple[int, int]]:
        return self.inner.chunks(numel, workers)

    def relay(self, received: list[Payload], rnd: Round) -> Payload | None:
        return self.inner.relay(received, rnd)

    def collect(self, server: dict[str, Tensor], payloads: Sequence[Payload], rnd: Round) -> None:
        self.inner.collect(server, payloads, rnd)
