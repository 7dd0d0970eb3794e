"""EXPERIMENTAL correction candidates, measured by the suite; not part of the library.

``ef14_warmup``: EF14 whose Top-K ratio decays geometrically from ``start`` to ``ratio`` over
the first ``over`` iterations (the sparsity warm-up of Deep Gradient Compression, Lin et al.
2018), so early steps, where the gradient direction changes fastest, are nearly dense.
Subclasses ``compressors.TopK`` locally; EF14 passes the round to ``compress``, which is what
lets the ratio depend on the iteration (EF21's fused kernel does not, so this is EF14 only).

Issue 14 (benchmarks/results/accuracy_issue14.md has the measurements):

``ef14_seg``: EF14 over ``SegmentTopK``, a Top-K that sees the parameters inside a bucket
(``SizedState`` binds each bucket's ``BucketState.sizes`` to its worker's compressor when the
bucket is installed; no library change): ``mode=param`` (each parameter keeps ceil(ratio d_j)
of its own entries), ``mode=norm`` (K entries of largest |x_i| / rms of i's parameter),
``dense_below=N`` (parameters under N entries sent dense as an fp32 part, the rest Top-K).
Measured: per-parameter and scale-normalised selection are worse than whole-bucket Top-K
(the large-gradient parameters' slots are useful); dense small tensors help SGD slightly and
cost 1% of dense bytes on a9a, whose biases are 1% of its parameters.

``ef14_smooth``: EF14 whose aggregate releases each round's pulse over later rounds (a
reservoir in the aggregate state; ``adaptive``: coordinate j's pulse over the rounds since its
last pulse, at most ``tau``). Closes most of AdamW's gap (Adam normalises a coordinate's rare
accumulated pulse by its own size) and costs SGD with momentum several points on digits (the
release is a lag): an optimizer-specific trade-off, not a default.

``ef14_dgc``: Deep Gradient Compression's momentum correction and masking for momentum SGD (the
optimizer told, its ``step`` replaced; ``compressor="topk8"`` and a fractional ``mask``, the share
of the momentum kept where a rank sent, for the 2026-12-06 runs): mixed, task-dependent results
(benchmarks/results/accuracy_adam.md); the library's ``ef14_mc`` is the same correction with the
user's optimizer unchanged (benchmarks/results/accuracy_momentum_sgd.md). ``compressor="sign"`` (with ``mask=False``
and ``fraction``) sends the momentum's scaled signs instead: worse than Top-K on digits
(benchmarks/results/accuracy_sgdm_6seeds.md).

``adam_mode``: the Adam default with its choices as options (``AdamMode``): ``momentum=False``
(the ranks send directions, as before the mode sent momentum) and ``fraction`` (``ScaledSign``'s
cyclic window, fewer than one bit per entry; 1 here, every sign, as the earlier results ran it)
and ``two_stage`` (the signs over the two-stage allreduce, ``onebit``'s path, with the window:
the LM loses 2 points more, benchmarks/results/accuracy_window.md).
Sending momentum is the library's default (benchmarks/results/accuracy_momentum.md), and so is a
window of 84% of the signs since it met the byte limit (benchmarks/results/accuracy_window.md).

``ef14_decay``: the SGD default's compressor with CO3's memory decay on the error (v = grad +
gamma e). Measured on the LM at 4 ranks under momentum SGD (benchmarks/results/accuracy_decay.md):
gamma = 0.97 gives the default's gap, 0.9 a worse one (+3.2% against +2.1%). Not pursued.

``ef14_signtopk``: EF14 over Top-K whose kept values are sent as their signs times one scale
(the mean kept magnitude; ``levels=2``: one for each half split at the median magnitude), the
cheapest values a wider support could carry (about 1 bit, plus entropy-coded positions: 15-20%
of the entries at under 3% of the bytes). Measured on the LM at 4 ranks under momentum SGD
(benchmarks/results/accuracy_signtopk.md): +5.0 to +7.0% against the default's +1.5% (2 seeds).
The magnitudes matter more than the extra coordinates; not pursued.

Issue 17 (benchmarks/results/accuracy_corrected_scalable.md): ``ef14_mc2s`` is ``ef14_mc`` whose compressed
momenta travel by the two-stage allreduce (``MomentumCorrectedTwoStage``), ``ef14_mcs`` ``ef14_mc`` over a shared
Top-K support; both flat in n on the links, both told the run's SGD. The LM at 4 ranks: +3.6% and +11.7%, where the
all-gathered corrected default is +0.5%. Not pursued.

``ef14_mclr`` (at commit df1afde; benchmarks/results/accuracy_lr_carry.md) carried ``ef14_mc``'s error across
learning-rate changes in update units; it is now the library's ``ef14_mc`` told its SGD (``rate``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

import ddp_hooks
from compressors import EF14, EF21, MomentumCorrectedEF14, TopK, kernels
from compressors.core.two_stage import TwoStage, _sender
from compressors.core.two_stage import chunks as two_stage_chunks
from compressors.core.compressor import ROUND0
from compressors.core.mechanism import flat
from compressors.mechanisms.adam_normalized import AdamNormalized, Clipping, debiased, mean_norm2, second_moment
from compressors.operators.float_format import FloatFormat
from compressors.operators.packed_topk import PackedTopK
from compressors.operators.shared_topk import SharedTopK
from compressors.operators.sign import ScaledSign
from compressors.operators.sparse import Sparsifier
from ddp_hooks import sgd
from ddp_hooks.adam import adam_settings, attach, rate_of
from ddp_hooks.registry import carried
from compressors.core.memory import ErrorAndMomentum
from compressors.core.payload import PartSpec, Payload
from compressors.core.rounds import Round


class WarmupTopK(TopK):
    """Top-K keeping ``start`` of the entries at iteration 0, ``ratio`` from iteration ``over``."""

    def __init__(self, ratio: float, start: float, over: int) -> None:
        super().__init__(ratio)
        self.start, self.over = start, over

    def ratio_at(self, t: int) -> float:
        if t >= self.over:
            return self.ratio
        return self.start * (self.ratio / self.start) ** (t / self.over)

    def k_for(self, numel: int, rnd: Round = ROUND0) -> int:
        return min(numel, max(1, math.ceil(self.ratio_at(rnd.t) * numel)))

    def select(self, x: Tensor, rnd: Round) -> tuple[Tensor, Tensor]:
        return kernels.topk_abs(x, self.k_for(x.numel(), rnd))


class Candidate(Protocol):
    def check(self, **options: object) -> None: ...

    def register(self, ddp: nn.parallel.DistributedDataParallel, **options: object) -> ddp_hooks.ThreePCState: ...


class _EF14Candidate:
    """A candidate is its ``_mechanism(**options)``; the suite checks options by building it and
    registers it through ``state_type``."""

    state_type: type[ddp_hooks.ThreePCState] = ddp_hooks.ThreePCState

    def _mechanism(self, **options: object) -> EF14:
        raise NotImplementedError

    def check(self, **options: object) -> None:
        self._mechanism(**options)

    def register(self, ddp: nn.parallel.DistributedDataParallel, **options: object) -> ddp_hooks.ThreePCState:
        state = self.state_type(self._mechanism(**options), model=ddp)
        ddp.register_comm_hook(state, ddp_hooks.threepc_hook)
        return state


@dataclass(frozen=True)
class EF14Warmup(_EF14Candidate):
    def _mechanism(self, ratio: float = 0.01, start: float = 0.25, over: int = 100) -> EF14:
        return EF14(WarmupTopK(ratio, start, over))


# --- issue 14: Top-K that sees the parameters inside a bucket ---------------------------------

class SegmentTopK(TopK):
    """Top-K over a bucket that concatenates parameters of ``sizes`` (bound per bucket by
    ``SizedState``; unbound: the whole tensor is one parameter).

    ``mode``: "bucket" (plain Top-K, K = ceil(ratio d)), "param" (each parameter j keeps
    ceil(ratio d_j) of its own entries), "norm" (K = ceil(ratio d) entries of largest
    |x_i| / rms(x over i's parameter)). ``dense_below``: parameters of fewer entries go dense
    (a fp32 part, no indices); Top-K (by ``mode``) runs over the rest.
    """

    def __init__(self, ratio: float, mode: str = "bucket", dense_below: int = 0,
                 sizes: tuple[int, ...] = ()) -> None:
        if mode not in ("bucket", "param", "norm"):
            raise ValueError(f"mode must be bucket, param or norm, got {mode!r}")
        super().__init__(ratio)
        self.mode, self.dense_below, self.sizes = mode, dense_below, tuple(sizes)

    def __repr__(self) -> str:
        return f"SegmentTopK(ratio={self.ratio}, mode={self.mode}, dense_below={self.dense_below})"

    def bind(self, sizes: tuple[int, ...]) -> SegmentTopK:
        return SegmentTopK(self.ratio, self.mode, self.dense_below, sizes)

    def _layout(self, numel: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(dense segments, sparse segments) as (offset, length)."""
        sizes = self.sizes if sum(self.sizes) == numel and self.sizes else (numel,)
        offsets = [0]
        for s in sizes[:-1]:
            offsets.append(offsets[-1] + s)
        segs = list(zip(offsets, sizes))
        dense = [sg for sg in segs if sg[1] < self.dense_below]
        sparse = [sg for sg in segs if sg[1] >= self.dense_below]
        return dense, sparse

    def k_for(self, numel: int, rnd: Round = ROUND0) -> int:
        _, sparse = self._layout(numel)
        if not sparse:
            return 0
        if self.mode == "param":
            return sum(min(n, max(1, math.ceil(self.ratio * n))) for _, n in sparse)
        total = sum(n for _, n in sparse)
        return min(total, max(1, math.ceil(self.ratio * total)))

    def _positions(self, segs: list[tuple[int, int]], device) -> Tensor:
        if not segs:
            return torch.zeros(0, dtype=torch.int64, device=device)
        return torch.cat([torch.arange(o, o + n, device=device) for o, n in segs])

    def spec(self, numel: int, rnd: Round = ROUND0) -> list[PartSpec]:
        dense, _ = self._layout(numel)
        parts = super().spec(numel, rnd)
        d = sum(n for _, n in dense)
        if d:
            parts.append(PartSpec("dense", torch.float32, d, True))
        return parts

    def select(self, x: Tensor, rnd: Round) -> tuple[Tensor, Tensor]:
        _, sparse = self._layout(x.numel())
        k = self.k_for(x.numel(), rnd)
        if not sparse:
            return x.new_zeros(0), torch.zeros(0, dtype=torch.int64, device=x.device)
        if self.mode == "param":
            vals, idx = [], []
            for o, n in sparse:
                v, i = kernels.topk_abs(x[o:o + n], min(n, max(1, math.ceil(self.ratio * n))))
                vals.append(v)
                idx.append(i.long() + o)
            return torch.cat(vals), torch.cat(idx)
        pos = self._positions(sparse, x.device)
        xs = x[pos] if len(sparse) > 1 or sparse[0] != (0, x.numel()) else x
        if self.mode == "bucket":
            v, i = kernels.topk_abs(xs, k)
            return v, pos[i.long()]
        rms = torch.stack([x[o:o + n].float().square().mean().sqrt() for o, n in sparse]).clamp_min(1e-30)
        scale = torch.repeat_interleave(rms, torch.tensor([n for _, n in sparse], device=x.device))
        _, i = kernels.topk_abs(xs.float() / scale, k)
        i = i.long()
        return xs[i], pos[i]

    def compress(self, x: Tensor, rnd: Round = ROUND0) -> Payload:
        flat = x.reshape(-1)
        values, indices = self.select(flat, rnd)
        payload = self.payload(values, indices, x.numel())
        dense, _ = self._layout(x.numel())
        if dense:
            payload.parts["dense"] = flat[self._positions(dense, x.device)].float()
        return payload

    def located(self, payload: Payload, rnd: Round) -> tuple[Tensor, Tensor]:
        values, indices = payload.parts["values"], payload.parts["indices"].long()
        dense = payload.parts.get("dense")
        if dense is None:
            return values, indices
        pos = self._positions(self._layout(payload.numel)[0], values.device)
        return torch.cat([values, dense]), torch.cat([indices, pos])


class SizedState(ddp_hooks.ThreePCState):
    """ThreePCState that binds each bucket's parameter sizes to its worker's compressor."""

    def install(self, state) -> None:
        compressor = state.worker.compressor
        if isinstance(compressor, SegmentTopK) and compressor.sizes != state.sizes:
            state.worker.compressor = compressor.bind(state.sizes)
        super().install(state)


@dataclass(frozen=True)
class EF14Segment(_EF14Candidate):
    def _mechanism(self, ratio: float = 0.01, mode: str = "param", dense_below: int = 0) -> EF14:
        return EF14(SegmentTopK(ratio, mode, dense_below))

    state_type = SizedState


class SmoothEF14(EF14):
    """EF14 whose aggregate releases each round's mean pulse over later rounds: a reservoir r
    (server state, the same on every rank) takes p = (1/n) sum_i C(e_i + grad_i), and the
    direction is a 1/tau share of it, g = (r + p) / tau, r <- r + p - g. The output sums to the
    same total as EF14's, delayed by tau - 1 rounds on average; tau = 1 is EF14."""

    def __init__(self, compressor, tau: float, adaptive: bool = False, floor: int = 1) -> None:
        super().__init__(compressor)
        self.tau, self.adaptive, self.floor = tau, adaptive, floor

    def __repr__(self) -> str:
        return f"SmoothEF14({self.compressor!r}, tau={self.tau}, adaptive={self.adaptive}, floor={self.floor})"

    def start(self, payloads, rnd: Round = ROUND0):
        server = super().start(payloads, rnd)
        server["r"] = torch.zeros_like(server["g"])
        if self.adaptive:  # per coordinate: the round it last received a pulse, its release time
            server["last"] = torch.full_like(server["g"], float(rnd.t))
            server["tau"] = torch.ones_like(server["g"])
        return server

    def aggregate(self, server, payloads, rnd: Round = ROUND0) -> None:
        g, r = server["g"], server["r"]
        g.zero_()
        self.compressor.accumulate(g, payloads, 1.0 / len(payloads), rnd)
        if self.adaptive:  # adaptive: tau_j = min(rounds since coordinate j's last pulse, tau)
            hit = g != 0
            last, tau = server["last"], server["tau"]
            gap = (float(rnd.t) - last[hit]).clamp(1.0, self.tau)
            tau[hit] = torch.where(gap >= self.floor, gap, torch.ones_like(gap))  # floor: no spreading below
            last[hit] = float(rnd.t)
            r.add_(g)
            g.copy_(r).div_(tau)
        else:
            r.add_(g)
            g.copy_(r).div_(self.tau)
        r.sub_(g)


@dataclass(frozen=True)
class EF14Smooth(_EF14Candidate):
    def _mechanism(self, ratio: float = 0.01, tau: float = 3.0, adaptive: bool = False, floor: int = 1) -> EF14:
        return SmoothEF14(TopK(ratio), tau, adaptive, floor)


@dataclass(frozen=True)
class EF14TwoStage(_EF14Candidate):
    """Top-K error feedback over the two-stage allreduce (``core.two_stage.TwoStage``): each
    rank sends every chunk's own Top-K to its owner, the owner keeps the Top-K of the chunk's
    mean plus its error. Link bytes per rank flat in n; the aggregate has K entries a round."""

    def _mechanism(self, ratio: float = 0.01, compressor: str = "topk") -> TwoStage:
        if compressor not in ("topk", "topk8"):
            raise ValueError(f"ef14_2s: compressor is 'topk' or 'topk8', got {compressor!r}")
        return TwoStage((TopK if compressor == "topk" else PackedTopK)(ratio))


# --- issue 14: momentum correction for SGD (the optimizer told) --------------------------------

class StepReplacedMomentumEF14(EF14):
    """EF14 on the worker's own momentum, Deep Gradient Compression's momentum correction and
    factor masking (Lin et al. 2018, Alg. 1 lines 9-13): u_i <- beta u_i + grad_i, v = e_i + u_i,
    send C(v), e_i <- v - C(v), and (``mask``) u_i <- 0 where C(v) sent (a number: u_i times it
    there). The optimizer then applies the aggregate without momentum (``MomentumCorrected.register``);
    the library's ``MomentumCorrectedEF14`` is the same correction with the optimizer unchanged."""

    memory_type = ErrorAndMomentum

    def __init__(self, compressor: TopK | ScaledSign, beta: float, mask: bool | float) -> None:
        super().__init__(compressor)
        self.beta, self.mask = beta, mask

    def __repr__(self) -> str:
        return f"StepReplacedMomentumEF14({self.compressor!r}, beta={self.beta}, mask={self.mask})"

    def setup(self, grad: Tensor) -> ErrorAndMomentum:
        return ErrorAndMomentum(torch.zeros_like(grad), grad)

    def step(self, grad: Tensor, rnd: Round = ROUND0) -> Payload:
        u = self.memory.u_i * self.beta + flat(grad)
        payload, error = self.compressor.residual(self.memory.e_i + u, rnd)
        if self.mask is not False:  # True: DGC's masking (0 kept); a number: the share of u kept where C(v) sent
            u[self.compressor.sent(payload, rnd).long()] *= 0.0 if self.mask is True else float(self.mask)
        self.memory = ErrorAndMomentum(error, u)
        return payload


@dataclass(frozen=True)
class MomentumCorrected(_EF14Candidate):
    """``ef14_dgc``: needs the run's ``torch.optim.SGD`` (momentum beta, no Nesterov), whose
    ``step`` becomes p <- p - lr (g + b), b <- beta b + wd p: the weight-decay term's own
    momentum, so that without compression this is SGD with momentum exactly."""

    wants_optimizer = True

    def _mechanism(self, ratio: float = 0.01, mask: bool = True, beta: float = 0.9, compressor: str = "topk",
                   fraction: float = 1.0, block: int = 2048) -> EF14:
        if compressor == "sign":
            if mask:
                raise ValueError("ef14_dgc over signs sends every entry of its window: pass mask=False")
            return StepReplacedMomentumEF14(ScaledSign(block, fraction), beta, mask)
        if compressor not in ("topk", "topk8"):
            raise ValueError(f"ef14_dgc: compressor is 'topk', 'topk8' or 'sign', got {compressor!r}")
        return StepReplacedMomentumEF14((PackedTopK if compressor == "topk8" else TopK)(ratio), beta, mask)

    def register(self, ddp: nn.parallel.DistributedDataParallel, optimizer: torch.optim.Optimizer | None = None,
                 **options: object) -> ddp_hooks.ThreePCState:
        if not isinstance(optimizer, torch.optim.SGD) or optimizer.param_groups[0]["nesterov"]:
            raise ValueError("ef14_dgc runs with torch.optim.SGD with momentum, without Nesterov")
        options.setdefault("beta", optimizer.param_groups[0]["momentum"])
        state = super().register(ddp, **options)

        def step(closure: object = None) -> None:
            optimizer._opt_called = True
            directions = state.directions()
            with torch.no_grad():
                for group in optimizer.param_groups:
                    for p in group["params"]:
                        if p.grad is not None:
                            b = optimizer.state[p].setdefault("wd_momentum", torch.zeros_like(p))
                            b.mul_(group["momentum"]).add_(p, alpha=group["weight_decay"])
                            p.add_(directions[id(p)].view_as(p) + b, alpha=-group["lr"])

        optimizer.step = step
        return state


class WaitedMaskEF14(MomentumCorrectedEF14):
    """``MomentumCorrectedEF14`` that masks the momentum only of the entries sent this round that
    the round before did not send (their pulse carries rounds of momentum); entries sent round
    after round (a9a's dominant coordinates) keep theirs."""

    _last: Tensor | None = None

    def masked(self, sent: Tensor) -> Tensor:
        now = torch.zeros(self.memory.u_i.numel(), dtype=torch.bool, device=sent.device)
        now[sent] = True
        waited = sent if self._last is None else sent[~self._last[sent]]
        self._last = now
        return waited


@dataclass(frozen=True)
class MomentumCorrectedWaited(_EF14Candidate):
    """``ef14_mcw``: ``WaitedMaskEF14`` told the run's SGD, as ``register(ddp, "ef14_mc", ...,
    optimizer=sgd)`` tells ``ef14_mc``."""

    wants_optimizer = True

    def _mechanism(self, ratio: float = 0.05, kept: float = 0.9) -> EF14:
        return WaitedMaskEF14(PackedTopK(ratio), kept=kept)

    def register(self, ddp: nn.parallel.DistributedDataParallel, optimizer: torch.optim.Optimizer | None = None,
                 **options: object) -> ddp_hooks.ThreePCState:
        chosen = self._mechanism(**options)
        chosen.follow, chosen.clipping = sgd.follows(optimizer), True
        state = ddp_hooks.ThreePCState(chosen, model=ddp)
        ddp.register_comm_hook(state, ddp_hooks.threepc_hook)
        sgd.attach(optimizer, state)
        return state


class PartiallyCorrectedEF14(MomentumCorrectedEF14):
    """``MomentumCorrectedEF14`` that corrects with beta' = share * beta (the optimizer's beta):
    u_i <- beta' u_i + grad_i, g^t = a^t - beta' a^{t-1}. Uncompressed, torch's SGD(beta) on g^t
    is SGD with momentum exactly for any beta' in [0, beta]; share 0 is plain EF14, share 1
    ``ef14_mc``."""

    def __init__(self, compressor: Sparsifier, share: float, kept: float) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be in [0, 1], got {share}")
        super().__init__(compressor, kept=kept)
        self.share = float(share)

    def __repr__(self) -> str:
        return f"PartiallyCorrectedEF14({self.compressor!r}, share={self.share}, kept={self.kept})"

    def checkpoint_name(self) -> str:
        return repr(self)

    @property
    def beta(self) -> float:
        return self.share * super().beta


@dataclass(frozen=True)
class MomentumPartlyCorrected(MomentumCorrectedWaited):
    """``ef14_mcp``: ``PartiallyCorrectedEF14`` over the SGD default's compressor, told the run's
    SGD as ``ef14_mc`` is."""

    def _mechanism(self, ratio: float = 0.05, kept: float = 1.0, share: float = 0.5) -> EF14:
        return PartiallyCorrectedEF14(PackedTopK(ratio), share, kept)


class LagNormalized(AdamNormalized):
    """The Adam mode whose n-rank second moment takes mu^2 from the lag-one autocovariance of the
    rank's gradients, c <- beta2 c + (1 - beta2) g_t g_{t-1} (independent minibatch noise: E[g_t
    g_{t-1}] = mu^2, where E[m^2] = mu^2 + Var(m)), w = s + (v^ - s) / n with s = clamp(c^, 0, v^).
    Torch ops; c and g_{t-1} live outside the memory (no rollback or checkpoint: an experiment);
    it follows the user's gradient clipping as the mode does (``AdamNormalized.normalized``)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.c: Tensor | None = None
        self.previous: Tensor | None = None
        self.lags = 0

    def spawn(self) -> LagNormalized:
        return LagNormalized(self.inner.spawn(), self._betas, self._eps, self.mean_of_ranks, self.momentum, self.follow,
                             self.clipping)

    def normalized(self, grad: Tensor, rnd: Round) -> Tensor:
        (beta1, beta2), eps = self._settings()
        raw = flat(grad).float()
        g = raw * self.clipping.factor if self.clipping is not None else raw
        fresh = self.v is None
        m = torch.zeros_like(g) if fresh else self.m
        v = torch.zeros_like(g) if fresh else self.v
        k = torch.ones_like(g) if fresh else self.k + 1.0
        self._spare = None
        m, v = m * beta1 + g * (1 - beta1), v * beta2 + g * g * (1 - beta2)
        v_hat = v / -torch.expm1(k * math.log(beta2))
        if self.previous is not None and self.previous.numel() == g.numel():
            self.c = (self.c * beta2 if self.c is not None else torch.zeros_like(g)) + g * self.previous * (1 - beta2)
            self.lags += 1
            s = torch.minimum((self.c / (1 - beta2 ** self.lags)).clamp_min(0.0), v_hat)
        else:
            m_hat = m / (-torch.expm1(k * math.log(beta1)) if beta1 > 0 else 1.0)
            s = torch.minimum(m_hat * m_hat, v_hat)
        w = s + (v_hat - s) / rnd.workers if rnd.workers > 1 else v_hat
        d = g / (w.sqrt() + eps)
        self.previous, self.m, self.v, self.k = g.clone(), m, v, k
        if self.clipping is not None:
            c1 = 1.0 / (-torch.expm1(k * math.log(beta1))) ** 2 if beta1 > 0 else torch.ones_like(k)
            share = 1.0 / rnd.workers if rnd.workers > 1 else 1.0
            self.norm2 = mean_norm2(raw, m, v, c1, 1.0 / -torch.expm1(k * math.log(beta2)), share)
        if not self.momentum:
            return d
        u = self.u if self.u is not None else torch.zeros_like(d)
        self.u = torch.lerp(u, d, 1.0 - beta1)
        return self.u / (-torch.expm1(k * math.log(beta1)) if beta1 > 0 else 1.0)


class NormalizedMomentum(AdamNormalized):
    """The Adam mode sending AdamW's own direction, m^_i / (sqrt(w_i) + eps) (the normalised
    momentum), instead of the momentum of d_i = grad_i / (sqrt(w_i) + eps): one rank uncompressed
    is then AdamW exactly (the momentum of d_i is not when w moves: the GRU LM on one rank without
    clipping, ``gd+opt`` 2.0995 against AdamW's 2.0283, benchmarks/results/accuracy_held_out.md).
    u_i is still updated, unused."""

    def spawn(self) -> NormalizedMomentum:
        return NormalizedMomentum(self.inner.spawn(), self._betas, self._eps, self.mean_of_ranks, self.momentum,
                                  self.follow, self.clipping)

    def normalized(self, grad: Tensor, rnd: Round) -> Tensor:
        super().normalized(grad, rnd)  # the moments m_i, v_i, k_i of this round
        betas, eps = self._settings()
        w = second_moment(self.m, self.v, self.k, betas, rnd.workers, self.mean_of_ranks)
        return debiased(self.m, betas[0], self.k).float() / (w.sqrt() + eps)


@dataclass(frozen=True)
class AdamMode:
    """``adam_mode``: ``register(ddp, optimizer=adamw)``'s mechanism, EF14 in the Adam mode, with
    what the library fixes made options: ``momentum=False`` sends the normalised directions and
    the optimizer keeps their momentum (the mode before it sent momentum); ``fraction`` (1 here,
    every sign; the library's default is 0.84) sends ``ScaledSign``'s cyclic window of that share
    of the signs; ``block``: entries per sign scale; ``lag``:
    ``LagNormalized``'s estimate of the n-rank second moment; ``two_stage``: ``TwoStage`` (the
    signs through the owners, ``onebit``'s path) instead of EF14; ``normalized_momentum``:
    ``NormalizedMomentum``'s direction; ``inner="ef21"``: EF21 over the signs instead of EF14 (the
    momentum moves little a round, so its increments compress better than it does); ``carry``: the inner EF14 carries its error across the
    AdamW's learning-rate changes (``EF14.rate``, what ``ef14_mc`` told its SGD does);
    ``compressor``/``ratio`` as ``ef14``'s."""

    wants_optimizer = True

    def _mechanism(self, compressor: str = "sign", ratio: float = 0.01, momentum: bool = True, fraction: float = 1.0,
                   block: int = 2048, lag: bool = False, betas: tuple[float, float] = (0.9, 0.999),
                   eps: float = 1e-8, two_stage: bool = False, normalized_momentum: bool = False,
                   carry: bool = False, inner: str = "ef14") -> AdamNormalized:
        if inner not in ("ef14", "ef21"):
            raise ValueError(f"adam_mode: inner is 'ef14' or 'ef21', got {inner!r}")
        if carry and (two_stage or inner != "ef14"):
            raise ValueError("adam_mode: carry needs the EF14 path, not two_stage")
        if two_stage:
            inner = TwoStage(ScaledSign(block, fraction))
        elif compressor == "sign":
            inner = (EF14 if inner == "ef14" else EF21)(ScaledSign(block, fraction))
        else:
            inner = ddp_hooks.mechanism(inner, compressor=compressor, ratio=ratio)
        if lag:
            return LagNormalized(inner, betas, eps, momentum=momentum, clipping=Clipping())
        mode = NormalizedMomentum if normalized_momentum else AdamNormalized
        return mode(inner, betas, eps, momentum=momentum, clipping=Clipping())

    def check(self, **options: object) -> None:
        self._mechanism(**options)

    def register(self, ddp: nn.parallel.DistributedDataParallel, optimizer: torch.optim.Optimizer | None = None,
                 **options: object) -> ddp_hooks.ThreePCState:
        settings = adam_settings(optimizer)
        options = {"betas": settings.betas, "eps": settings.eps, **options}
        chosen = self._mechanism(**options)
        if options.get("carry"):
            chosen.inner.rate = rate_of(optimizer)
        state = ddp_hooks.ThreePCState(chosen, model=ddp)
        ddp.register_comm_hook(state, ddp_hooks.threepc_hook)
        attach(optimizer, state)
        return state


class SignTopK(TopK):
    """Top-K's support; each kept value sent as its sign times the mean kept magnitude (``levels``
    1) or the mean magnitude of its half, split at the median (``levels`` 2)."""

    def __init__(self, ratio: float, levels: int) -> None:
        super().__init__(ratio)
        self.levels = levels

    def select(self, x: Tensor, rnd: Round) -> tuple[Tensor, Tensor]:
        values, indices = super().select(x, rnd)
        magnitude = values.abs()
        if self.levels == 1:
            return values.sign() * magnitude.mean(), indices
        upper = magnitude > magnitude.median()
        means = [magnitude[part].mean() if part.any() else magnitude.mean() for part in (upper, ~upper)]
        return values.sign() * torch.where(upper, means[0], means[1]), indices


@dataclass(frozen=True)
class EF14SignTopK(_EF14Candidate):
    def _mechanism(self, ratio: float = 0.15, levels: int = 1) -> EF14:
        if levels not in (1, 2):
            raise ValueError(f"ef14_signtopk: levels is 1 or 2, got {levels}")
        return EF14(SignTopK(ratio, levels))


class QuantizedTopK(TopK):
    """Top-K's support; each kept value rounded to the float format ``fmt`` relative to the
    payload's largest |value| (round to nearest, one fp32 scale): what a coded Top-K with
    ``fmt`` values would deliver (the values only; the payload still carries fp32)."""

    def __init__(self, ratio: float, fmt: str) -> None:
        super().__init__(ratio)
        self.fmt = FloatFormat.parse(fmt)

    def select(self, x: Tensor, rnd: Round) -> tuple[Tensor, Tensor]:
        values, indices = super().select(x, rnd)
        top = float(values.abs().max()) if values.numel() else 0.0
        if top == 0.0 or not math.isfinite(top):
            return values, indices
        scale = top / self.fmt.max_value
        f = self.fmt
        codes = kernels.float_encode(values, f.exponent, f.mantissa, f.bias, scale)
        return kernels.float_decode(codes, f.exponent, f.mantissa, f.bias, scale), indices


@dataclass(frozen=True)
class EF14QuantizedTopK(_EF14Candidate):
    def _mechanism(self, ratio: float = 0.1, fmt: str = "fp4-121") -> EF14:
        return EF14(QuantizedTopK(ratio, fmt))


class DecayedEF14(EF14):
    """EF14 whose error decays: v = grad + gamma e (CO3's memory decay, Chen et al. 2022, Eq. (8),
    over a sparsifier)."""

    def __init__(self, compressor: TopK, gamma: float) -> None:
        super().__init__(compressor)
        self.decay = gamma

    def __repr__(self) -> str:
        return f"DecayedEF14({self.compressor!r}, gamma={self.decay})"


@dataclass(frozen=True)
class EF14Decay(_EF14Candidate):
    """``ef14_decay``: the SGD default's compressor (``PackedTopK``) with a decaying error."""

    def _mechanism(self, ratio: float = 0.05, gamma: float = 0.9) -> EF14:
        return DecayedEF14(PackedTopK(ratio), gamma)


EXPERIMENTAL: dict[str, Candidate] = {"ef14_decay": EF14Decay(), "ef14_warmup": EF14Warmup(), "ef14_seg": EF14Segment(),
                                     "ef14_smooth": EF14Smooth(), "ef14_2s": EF14TwoStage(),
                                     "ef14_dgc": MomentumCorrected(), "adam_mode": AdamMode(),
                                     "ef14_signtopk": EF14SignTopK(), "ef14_qtopk": EF14QuantizedTopK(),
                                     "ef14_mcw": MomentumCorrectedWaited(), "ef14_mcp": MomentumPartlyCorrected()}


# --- issue 17: the corrected SGD default over the two-stage allreduce ----------------------------

@dataclasses.dataclass
class MomentumAndOwnerError(ErrorAndMomentum):
    """e_i, u_i and s, the worker's error as the owner of a chunk (``core.two_stage``)."""

    s: Tensor


class MomentumCorrectedTwoStage(MomentumCorrectedEF14):
    """``MomentumCorrectedEF14`` whose compressed momenta travel by the two-stage allreduce: each
    chunk of v = e_i + u_i compressed for its owner, the owner compresses the chunk's mean plus its
    error s, and a^t is decoded from the owners' payloads; g^t = a^t - beta a^{t-1} as before."""

    two_stage = True
    memory_type = MomentumAndOwnerError
    written_in_place = frozenset({"s"})
    chunks = staticmethod(two_stage_chunks)
    chunk_spec = TwoStage.chunk_spec
    spec = TwoStage.spec
    split = staticmethod(TwoStage.split)
    _owner = TwoStage._owner
    relay = TwoStage.relay

    def setup(self, grad: Tensor) -> MomentumAndOwnerError:
        return MomentumAndOwnerError(torch.zeros_like(grad), grad, torch.zeros_like(grad))

    def step(self, grad: Tensor, rnd: Round = ROUND0) -> Payload:
        s = self.memory.s
        payload = super().step(grad, rnd)
        self.memory = MomentumAndOwnerError(self.memory.e_i, self.memory.u_i, s)
        if self._round is not None:
            self._round = self._round._replace(memory=self.memory)
        return payload

    def send(self, v: Tensor, rnd: Round) -> tuple[Payload, Tensor]:
        sent = {}
        for j, (lo, hi) in enumerate(self.chunks(v.numel(), rnd.workers)):
            sent[str(j)], rest = self.compressor.residual(v[lo:hi], _sender(rnd, rnd.worker, j))
            if rest.data_ptr() != v[lo:hi].data_ptr():
                v[lo:hi] = rest
        return Payload.merge(v.numel(), **sent), v

    def collect(self, server: dict[str, Tensor], relayed, rnd: Round = ROUND0) -> None:
        TwoStage.collect(self, server, relayed, rnd)
        self.increment(server, rnd)


@dataclass(frozen=True)
class MomentumCorrected2S(MomentumCorrectedWaited):
    """``ef14_mc2s``: ``MomentumCorrectedTwoStage`` over the SGD default's compressor, told the run's SGD."""

    def _mechanism(self, ratio: float = 0.05, kept: float = 1.0) -> EF14:
        return MomentumCorrectedTwoStage(PackedTopK(ratio), kept=kept)


EXPERIMENTAL["ef14_mc2s"] = MomentumCorrected2S()


@dataclass(frozen=True)
class MomentumCorrectedShared(MomentumCorrectedWaited):
    """``ef14_mcs``: ``MomentumCorrectedEF14`` over ``SharedTopK`` (one support for every rank, one
    allreduce of values and proposals), told the run's SGD."""

    def _mechanism(self, ratio: float = 0.05, kept: float = 1.0, explore: float = 0.1,
                   propose: str = "residual") -> EF14:
        return MomentumCorrectedEF14(SharedTopK(ratio, explore=explore, propose=propose), kept=kept)


EXPERIMENTAL["ef14_mcs"] = MomentumCorrectedShared()


@dataclass(frozen=True)
class EF14RateCarried:
    """``ef14_lr``: the uncorrected SGD default (EF14 over ``PackedTopK``, what ``register(ddp)`` runs
    under Nesterov, plain SGD or no optimizer) whose error is carried across the run's learning-rate
    changes (``EF14.rate``: e_i lr_{t-1} / lr_t, EF-SGD's update units), as told ``ef14_mc`` does."""

    wants_optimizer = True

    def _mechanism(self, ratio: float = 0.05) -> EF14:
        return EF14(PackedTopK(ratio))

    def check(self, ratio: float = 0.05) -> None:
        self._mechanism(ratio)

    def register(self, ddp: nn.parallel.DistributedDataParallel, optimizer: torch.optim.Optimizer | None = None,
                 ratio: float = 0.05) -> ddp_hooks.ThreePCState:
        chosen = self._mechanism(ratio)
        carried(chosen, optimizer)
        state = ddp_hooks.ThreePCState(chosen, model=ddp)
        ddp.register_comm_hook(state, ddp_hooks.threepc_hook)
        return state


EXPERIMENTAL["ef14_lr"] = EF14RateCarried()
