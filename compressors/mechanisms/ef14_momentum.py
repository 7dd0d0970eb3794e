"""EF14 with momentum correction (Deep Gradient Compression, Lin et al. 2018, Sec. 3.2) for
momentum SGD, with the user's optimizer unchanged."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .. import kernels
from ..core.compressor import ROUND0, Compressor
from ..core.mechanism import flat
from ..core.memory import ErrorAndMomentum, reusable
from ..core.payload import Payload
from ..core.rounds import Round
from ..operators.sparse import Sparsifier
from .ef14 import EF14

MOMENTUM = "momentum"  # the aggregate entry a^t (``server["g"]`` is a^t - beta a^{t-1})


class MomentumCorrectedEF14(EF14):
    """Error feedback on each worker's own momentum (DGC's momentum correction, Lin et al. 2018,
    Alg. 1 lines 9-13, with a partial momentum-factor masking), worker i at round t:

        u_i <- beta u_i + grad_i,   v = e_i + u_i,   p_i = C(v),   e_i <- v - p_i,
        u_i <- kept u_i at the entries p_i sent                    (DGC's masking: kept = 0)
        a^t = (1/n) sum_i p_i,      g^t = a^t - beta a^{t-1}        (left in the gradients)

    Torch's SGD(momentum=beta) on g^t keeps b^t = beta b^{t-1} + g^t + wd x = a^t + B^t in its buffer,
    B^t = beta B^{t-1} + wd x its weight decay's momentum, so it steps by the aggregate of the
    compressed momenta, DGC's step, with no change to the optimizer (its checkpoints and schedulers
    stay torch's). Gradient clipping needs ``clipping`` (set by ``register(..., optimizer=sgd)``,
    whose step follows it, ``ddp_hooks.sgd``): under compression g^t carries the momentum's
    accumulated pulses, about 1/(1 - beta) times a gradient's norm, so the user's clipping of g^t
    shrinks every step and b^t no longer holds a^t (measured without ``clipping``: 8-12% worse than
    allreduce with clipping at 1.0). With ``clipping``, ``presented`` shows the clipping an
    estimate of the mean gradient's norm (``mean_norm2``), the step reads the factor c the user
    applied, ``clip`` takes c grad_i into the memory in place of what the round took, and the
    next rounds take c grad_i (clip_grad_norm_ clips the mean gradient of the n ranks; here each
    rank clips its own by c, computed from its estimate). With C the identity and kept = 1, a^t is the momentum
    of the mean gradient and this is SGD with momentum exactly; with Nesterov the step g^t + beta b^t
    is then Nesterov's too. It assumes one optimizer step on ``.grad`` per committed round: accumulate
    micro-batches under ``ddp.no_sync()`` (a second synchronised backward before the step would add
    its g to the first's). Where a step does not apply g (a step skipped that the hook did not flag,
    a parameter ``find_unused_parameters`` leaves without a gradient, the hook's state resumed
    without the optimizer's or the reverse), the buffer and a^t part, and the difference decays as
    beta^k.

    Why. Under error feedback a coordinate waits for its turn while the optimizer's momentum
    applies only what arrived, so the momentum acts on stale pulses; correcting it before the
    compression lets the error accumulate momentum-weighted gradients. kept < 1 damps the momentum
    of the coordinates sent most often (sent every round, they move with momentum kept * beta),
    which holds the pulses of the others in check. Measured (the accuracy suite, momentum SGD, over
    Top-K 5% in 16 bits an entry, 2.9% of the bytes; ``benchmarks/results/accuracy_momentum_sgd.md``):
    the byte-level LM at 4 ranks +0.8% of validation loss over 6 seeds (+2.3% without the
    correction), digits at 2 ranks +0.13 pp (+1.07 pp), a9a +0.33 pp (0), all without clipping;
    kept = 1 left digits 1.4 pp below allreduce and DGC's kept = 0 cost the LM +4.5%. With
    clipping at 1.0 and a cosine schedule (``clipping``; ``accuracy_sgd_clipping.md``) the masking
    costs instead: kept = 0.9 digits +1.37 pp (6 seeds), the LM at 4 ranks +1.1%; kept = 1 -0.33 pp
    and +0.8%.

    Learning-rate schedules (``rate``, the optimizer's learning rate lr_t read each round): e_i
    is kept in update units, as EF-SGD keeps its error (Karimireddy et al. 2019, Alg. 2: p = lr g
    + e), by carrying it as e_i lr_{t-1} / lr_t into round t (``carry``): the momentum a round
    leaves unsent is stepped later at the rate of the round that left it, not at a decayed one,
    and x - (lr-weighted e) follows the uncompressed run's iterate (``EF14.carry``). Under a
    constant rate nothing changes (carry 1, the same bits). Measured (the held-out GRU LM, warm-up
    + cosine + clipping, 3 seeds, ``benchmarks/results/accuracy_lr_carry.md``): +1.2% -> +0.7% at 2 ranks.

    Dense round: u_i = grad_i (e_i = 0) and g = a = the mean gradient, so SGD's buffer keeps the
    momentum it had (b - a then decays as beta^k): exact in the dense limit at the first round and
    at any later dense round (warm-up, a resume on another number of ranks). ``beta`` is the
    optimizer's momentum; ``follow``: where each round reads it instead (the optimizer's param
    groups, which a scheduler may change). Memory: e_i, u_i; aggregate: g and ``MOMENTUM`` (a).
    """

    memory_type = ErrorAndMomentum
    memory: ErrorAndMomentum
    overwrites = frozenset({"g", MOMENTUM})
    _spare: tuple[Tensor, Tensor] | None = None  # the memory before the current one: this round's buffers

    def __init__(self, compressor: Compressor, beta: float = 0.9, kept: float = 0.9,
                 follow: Callable[[], float] | None = None, clipping: bool = False,
                 rate: Callable[[], float] | None = None) -> None:
        if not isinstance(compressor, Sparsifier):
            raise ValueError(f"momentum correction masks the momentum where C sent, so C must be a sparsifier "
                             f"(Top-K, Rand-K); got {compressor!r}")
        if not 0.0 <= kept <= 1.0:
            raise ValueError(f"kept (the share of the momentum kept where C sent) must be in [0, 1], got {kept}")
        checked_beta(beta)
        super().__init__(compressor)
        self._beta, self.kept, self.follow, self.clipping = float(beta), float(kept), follow, clipping
        self.rate = rate  # what each round reads the learning rate from (``EF14.carry``); None: a constant one
        self.gain = 1.0  # what multiplies grad_i in u_i: the user's last clipping factor (``clip``)
        self.norm2: float | None = None  # ||grad_i||^2 of the last round (``clipping``)
        self.shown: float | None = None  # what ``presented`` multiplied the last aggregate by
        self._round: Taken | None = None  # ``_remember``

    def __repr__(self) -> str:
        """With the momentum this round (``follow``'s: the ranks compare it at their first round)."""
        try:
            beta = self.beta
        except ValueError as e:  # a repr never raises; the round does
            beta = f"<{e}>"
        return f"MomentumCorrectedEF14({self.compressor!r}, beta={beta}, kept={self.kept})"

    def checkpoint_name(self) -> str:
        """Without beta: the memories stay valid when a scheduler moves the momentum."""
        return f"MomentumCorrectedEF14({self.compressor!r}, kept={self.kept})"

    @property
    def beta(self) -> float:
        """The momentum this round (``follow``'s, else the one built with)."""
        return checked_beta(self.follow()) if self.follow is not None else self._beta

    def setup(self, grad: Tensor) -> ErrorAndMomentum:
        return ErrorAndMomentum(torch.zeros_like(grad), grad)

    def init(self, grad: Tensor, rnd: Round = ROUND0) -> Payload:
        payload = super().init(grad, rnd)
        self.norm2 = None  # a dense round's g is the mean gradient: shown as it is
        self._remember(None, None, 1.0, 0.0, None)  # a dense round: u_i = grad_i, e_i = 0
        return payload

    def step(self, grad: Tensor, rnd: Round = ROUND0) -> Payload:
        """u' = beta u + gain grad and v = carry e + u' in one pass (``kernels.momentum_compensate``),
        in the buffers of the round before last; neither tensor of the memory it replaces is written."""
        e, u, beta, carry = self.memory.e_i, self.memory.u_i, self.beta, self.carry()
        spare = self._spare or (None, None)
        u_new = reusable(spare[1], u.numel(), u.device, busy=(e, u))
        v = reusable(spare[0], e.numel(), e.device, busy=(e, u, u_new))
        sums = kernels.momentum_compensate(flat(grad), u, e, beta, self.gain, carry, u_new=u_new, v=v)
        if self.clipping:
            total, inner = sums.tolist()
            self.norm2 = mean_norm2(total, inner, beta, self.gain, rnd.workers)
        payload, error = self.send(v, rnd)
        sent = self.masked(self.compressor.sent(payload, rnd).long()) if self.kept != 1.0 else None
        if sent is not None:
            u_new[sent] *= self.kept
        self._spare, self.memory = (e, u), ErrorAndMomentum(error, u_new)
        readable = sent is None and self.gain > 0.0  # grad_i = (u' - beta u) / gain: no copy needed
        self._remember(None if readable else flat(grad), sent, self.gain, beta, u)
        return payload

    def send(self, v: Tensor, rnd: Round) -> tuple[Payload, Tensor]:
        """The payload of C(v) and the new error v - C(v) (written over v where C allows)."""
        return self.compressor.residual(v, rnd)

    def masked(self, sent: Tensor) -> Tensor:
        """The entries whose momentum is masked (times ``kept``) this round: every entry sent."""
        return sent

    # -- following the user's gradient clipping (``ddp_hooks.sgd``) ----------------------------
    def _remember(self, grad: Tensor | None, sent: Tensor | None, taken: float, beta: float,
                  before: Tensor | None) -> None:
        """With ``clipping``: what ``clip`` needs of this round (``Taken``). grad_i is copied only
        where u_i does not give it back (a masking, or a gain of 0; the bucket is overwritten); else
        it is (u_i - beta u_i^prev) / taken from the memories, which stay unwritten until the next round."""
        if self.clipping:
            self._round = Taken(grad.clone() if grad is not None else None, sent, taken, beta, before, self.memory)

    @property
    def dense_round(self) -> bool:
        """Whether the round ``clip`` would correct was dense (``.grad`` held the mean gradient)."""
        return self._round is not None and self._round.before is None

    def presented(self, g: Tensor) -> float:
        """With ``clipping``: what rescales g^t to this rank's estimate of the mean gradient's norm
        (``mean_norm2``; 1 after a dense round, whose g is the mean gradient), so that the user's
        ``clip_grad_norm_`` on ``.grad`` sees a gradient's norm and not g^t's pulses (about
        1/(1 - beta) of it)."""
        if not self.clipping:
            return 1.0
        if self.norm2 is None:
            self.shown = 1.0
            return 1.0
        held = math.sqrt(float(torch.dot(g, g)))
        self.shown = math.sqrt(self.norm2) / held if held > 0.0 and math.isfinite(held) else 1.0
        return self.shown

    def clip(self, factor: float, aggregate: dict[str, Tensor] | None = None) -> None:
        """The last round as if u_i had taken ``factor`` grad_i (the user's clipping c, read back
        after the round by ``ddp_hooks.sgd``) where it took ``gain`` grad_i (the last c; 1 in a
        dense round): p_i is sent, so the difference goes to the memory, e_i -= (gain - c) grad_i
        and u_i -= (gain - c) m * grad_i (m: ``kept`` where p_i sent, else 1), and error feedback
        sends it with later rounds; the next rounds take c grad_i. So c takes effect one round
        late: a factor that moves slowly is followed, a one-step spike is stepped at the last
        one. ``aggregate``: a dense round's, when every rank applied this c (every bucket's
        round was dense, so ``.grad`` held the same mean gradient everywhere): the round is then
        clipped exactly, u_i = c grad_i with e_i = 0, and a and g are scaled by c, so that the
        step is clipped SGD's. Once per round, and only on the memory the round wrote (not after
        a rollback restored the one before)."""
        if self._round is None or self._round.memory is not self.memory:
            return
        taken, self._round = self._round, None
        cut, self.gain = taken.taken - factor, factor
        if cut == 0.0:
            return
        e, u = self.memory.e_i, self.memory.u_i
        if taken.before is None:  # dense: u_i = grad_i
            if aggregate is not None:
                u.mul_(factor)
                for entry in ("g", MOMENTUM):
                    aggregate[entry].mul_(factor)
                return
            e.sub_(u, alpha=cut)
            u.mul_(1.0 - cut)
        elif taken.grad is None:  # grad_i = (u_i - beta u_i^prev) / taken, no entry masked
            share = cut / taken.taken
            e.sub_(u, alpha=share).add_(taken.before, alpha=share * taken.beta)
            u.mul_(1.0 - share).add_(taken.before, alpha=share * taken.beta)
        else:
            e.sub_(taken.grad, alpha=cut)
            u.sub_(taken.grad, alpha=cut)
            if taken.sent is not None and self.kept != 1.0:
                u[taken.sent] += taken.grad[taken.sent] * (cut * (1.0 - self.kept))

    def start(self, payloads: Sequence[Payload], rnd: Round = ROUND0) -> dict[str, Tensor]:
        server = super().start(payloads, rnd)
        server[MOMENTUM] = server["g"].clone()
        return server

    def aggregate(self, server: dict[str, Tensor], payloads: Sequence[Payload], rnd: Round = ROUND0) -> None:
        """a^t = the mean of the payloads, g = a^t - beta a^{t-1}: two passes, into the entries'
        buffers, both overwritten; a^{t-1} is read from ``rnd.shared``, the aggregate state before
        the round (which the hook and the simulation pass, and which may be ``server``'s own
        tensor: g is written over it elementwise, after its read)."""
        if MOMENTUM not in rnd.shared:
            raise ValueError("MomentumCorrectedEF14.aggregate reads a^{t-1} from rnd.shared: pass the aggregate "
                             "state before the round, Round(..., shared=dict(server))")
        self.compressor.mean(server["g"], payloads, rnd)
        self.increment(server, rnd)

    def increment(self, server: dict[str, Tensor], rnd: Round) -> None:
        """With a^t in ``server["g"]``: g = a^t - beta a^{t-1} there, a^t in ``MOMENTUM``."""
        a = server["g"]
        g = torch.sub(a, rnd.shared[MOMENTUM], alpha=self.beta, out=server[MOMENTUM])
        server["g"], server[MOMENTUM] = g, a


class Taken(NamedTuple):
    """A round as ``clip`` corrects it: u_i^new = m * (beta u_i^prev + taken grad_i), m the
    masking. ``grad``: a copy of grad_i, kept only where m is not 1 (else None); ``before``:
    u_i^prev (None: a dense round, u_i = grad_i); ``memory``: the memory the round wrote."""

    grad: Tensor | None
    sent: Tensor | None
    taken: float
    beta: float
    before: Tensor | None
    memory: ErrorAndMomentum


def checked_beta(beta: float) -> float:
    """``beta`` as a float, or a ValueError unless 0 <= beta < 1 (a heavy-ball momentum)."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"momentum correction needs a momentum beta in [0, 1), got {beta}")
    return float(beta)


def mean_norm2(total: float, inner: float, beta: float, gain: float, workers: int) -> float:
    """This rank's estimate of ||(1/n) sum_i grad_i||^2 from total = ||grad||^2 and inner =
    <u, grad>, u its momentum before the round: s + (total - s) / n, where s = (1 - beta) inner /
    gain (clamped to [0, total]) estimates the mean's share ||E grad||^2 (u, of earlier rounds'
    gain-scaled gradients, is independent of this minibatch's noise), whose noise averages down by n."""
    if workers <= 1 or gain <= 0.0:
        return total
    signal = min(max(inner * (1.0 - beta) / gain, 0.0), total)
    return signal + (total - signal) / workers
