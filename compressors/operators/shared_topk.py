"""Shared Top-K: one support for all workers, proposed by a cyclic leader one round ahead, so
only values travel and they travel by one allreduce."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .. import kernels
from ..core.compressor import ROUND0
from ..core.payload import PartSpec, Payload
from ..core.rounds import Round
from .sparse import Sparsifier

SUPPORT = "support"  # the aggregate-state entry: a 0/1 fp32 mask of the proposed coordinates
EXACT = 1 << 23  # fp32 holds integers up to here exactly, also after an average over n and back


class SharedTopK(Sparsifier):
    """C(x) = x restricted to S^t, the same S^t on every worker, agreed one round ahead inside
    the round's own allreduce (after ScaleCom's cyclic local Top-K, Chen et al., NeurIPS 2020,
    which broadcasts a leader's indices before each allreduce instead):

        S^t = P^{t-1}  plus  R = floor(explore K) coordinates drawn with a seed all workers share,
        P^t = the union over workers i of the m_i largest |x_i^t| outside S^t,

    where the K - R proposal slots are dealt cyclically (slot j to worker (j + t) mod n), so
    worker i proposes m_i = K - R over n of them, rounded (with n > K - R, a rotating subset of
    workers proposes one each). x_i^t is what worker i compresses (EF14: e_i + grad; EF21:
    grad - g_i), so worker i proposes the top of its residual x_i - C(x_i), the mass it carries
    into round t + 1 (``propose="residual"``), or the top of x_i itself, what it sends this round
    included (``propose="input"``). The residual's top sends an entry that stays large every other
    round at most; that helped plain EF14 in the simulation (digits, 4 workers, 2%: .964 against
    .901) and cost the momentum-corrected SGD default (the LM at 4 ranks, 5%: +9.2% against +6.1%
    of validation loss over 3 seeds; benchmarks/results/shared_support.md). P^0 is the top of |g^0| (the dense
    round). Worker i writes its indices
    (+ 1, as fp32 numbers; two 12-bit digits each from 2^23 entries on) into its own slots of
    the part "proposal" and zeros elsewhere: every part is aligned, so a linear mechanism's
    payload travels as one averaging allreduce of about 2K values, whose link bytes per rank do
    not grow with the number of workers (a dense ring allreduce moves 2(n - 1)/n of the tensor;
    this moves the same fraction of about 2K/d), and decoding it is one sparse add of K values.

    Contractive for R >= 1: every coordinate outside P^{t-1} is kept with probability at least
    R/d, so E||C(x) - x||^2 <= (1 - R/d)||x||^2, alpha = R/d (the proposed part only helps; the
    share of ||x||^2 a run keeps is measured by benchmarks/shared_support.py). Unscaled values.
    """

    deterministic = False
    sends_indices = False
    aligned = True

    def __init__(self, ratio: float | None = None, *, k: int | None = None, explore: float = 0.1,
                 seed: int = 0, propose: str = "residual") -> None:
        if not 0.0 <= explore <= 1.0:
            raise ValueError(f"SharedTopK explore (share of K drawn at random) must lie in [0, 1], got {explore}")
        if propose not in ("residual", "input"):
            raise ValueError(f"SharedTopK propose must be 'residual' (the top of x - C(x)) or 'input' (the top of "
                             f"x), got {propose!r}")
        super().__init__(ratio, k=k)
        self.explore, self.seed, self.propose = explore, seed, propose
        self._last: tuple[tuple[int, int], Tensor | None, Tensor] | None = None

    def __repr__(self) -> str:
        rule = "" if self.propose == "residual" else f", propose={self.propose!r}"  # checkpoints name the default as before
        return f"SharedTopK({self._size()}, explore={self.explore}, seed={self.seed}{rule})"

    def explored(self, numel: int) -> int:
        """R, the coordinates drawn at random."""
        return math.floor(self.explore * self.k_for(numel))

    def proposed(self, numel: int) -> int:
        """K - R, the coordinates the leader proposes."""
        return self.k_for(numel) - self.explored(numel)

    def alpha(self, numel: int) -> float:
        if self.explored(numel) == 0:
            raise ValueError(f"{self!r} draws no random entry on a tensor of {numel} elements (floor(explore K) = 0), "
                             "so nothing bounds its contraction: raise explore or K")
        return self.explored(numel) / numel

    # -- the support ------------------------------------------------------------------------
    def support(self, numel: int, rnd: Round = ROUND0) -> Tensor:
        """S^t, ascending: the proposal agreed last round plus the shared random draw (at least
        K entries; more only where re-bucketing joined units whose proposals add up to more).
        Cached for the round (spec, compress and every decode read it)."""
        mask, key, last = rnd.shared.get(SUPPORT), (rnd.t, numel), self._last
        if last is None or last[0] != key or last[1] is not mask:
            last = self._last = (key, mask, self._draw(numel, rnd, mask))  # one assignment: callbacks read it too
        return last[2]

    def _draw(self, numel: int, rnd: Round, mask: Tensor | None) -> Tensor:
        k = self.k_for(numel)
        top = mask.nonzero().view(-1).cpu() if mask is not None else torch.zeros(0, dtype=torch.long)
        drawn = rnd.subset(self.seed, numel, min(numel, k + top.numel()), shared=True)
        rest = drawn[~torch.isin(drawn, top)][:max(0, k - top.numel())]  # O(K), not a mask of the tensor
        device = mask.device if mask is not None else torch.device("cpu")
        return torch.cat([top, rest]).sort().values.to(device)

    # -- payloads ---------------------------------------------------------------------------
    @staticmethod
    def digits(numel: int) -> int:
        """fp32 numbers per proposed index."""
        return 1 if numel < EXACT else 2

    def spec(self, numel: int, rnd: Round = ROUND0) -> list[PartSpec]:
        return [PartSpec("values", torch.float32, self.support(numel, rnd).numel(), True),
                PartSpec("proposal", torch.float32, self.digits(numel) * self.proposed(numel), True)]

    def select(self, x: Tensor, rnd: Round) -> tuple[Tensor, Tensor]:
        indices = self.support(x.numel(), rnd).to(x.device)
        return x[indices].float(), indices

    def compress(self, x: Tensor, rnd: Round = ROUND0) -> Payload:
        flat = x.reshape(-1)
        values, indices = self.select(flat, rnd)
        payload = self.payload(values, indices, flat.numel())
        payload.parts["proposal"] = self._propose(flat, indices, rnd)
        return payload

    def _propose(self, x: Tensor, kept: Tensor, rnd: Round) -> Tensor:
        """This worker's share of P^t (index + 1, as fp32 digits) in its own slots; zeros in
        every other worker's slots."""
        numel, m = x.numel(), self.proposed(x.numel())
        out = torch.zeros(self.digits(numel), m, dtype=torch.float32, device=x.device)
        slots = torch.arange(m, device=x.device)
        slots = slots[(slots + rnd.t) % rnd.workers == rnd.worker]
        if slots.numel() == 0:
            return out.view(-1)
        scores = x.float()
        if self.propose == "residual":  # zeros at the support, in a copy ("input" reads x as it is)
            scores = scores.clone()
            scores[kept] = 0.0
        chosen = kernels.topk_abs(scores, slots.numel())[1].long() + 1
        if self.digits(numel) == 1:
            out[0, slots] = chosen.float()
        else:
            out[0, slots], out[1, slots] = (chosen >> 12).float(), (chosen & 0xFFF).float()
        return out.view(-1)

    # -- the shared state -------------------------------------------------------------------
    def shared_start(self, g: Tensor) -> dict[str, Tensor]:
        """P^0: the top K - R entries of |g^0|."""
        m = self.proposed(g.numel())
        top = kernels.topk_abs(g, m)[1].long() if m else torch.zeros(0, dtype=torch.long)
        return {SUPPORT: self._mask(top, g)}

    def shared_update(self, server: dict[str, Tensor], payloads: Sequence[Payload], rnd: Round = ROUND0) -> None:
        """P^t from the leader's "proposal" part. One worker sends non-zeros, so the sum over the
        n payloads (or n times their mean) is the leader's numbers exactly. No proposal (the
        leader stayed silent, or a round sent something else: 3PCv5's dense one): the support
        stays."""
        sent = [p.parts["proposal"] for p in payloads if "proposal" in p.parts]
        if not sent:
            return
        total = torch.stack(sent).double().sum(0) * (rnd.workers / len(payloads))
        digits = total.round().long().view(self.digits(server["g"].numel()), -1)
        digits = digits[0] if digits.shape[0] == 1 else (digits[0] << 12) + digits[1]
        if bool((digits > 0).any()):
            server[SUPPORT] = self._mask(digits[digits > 0] - 1, server["g"])

    @staticmethod
    def _mask(indices: Tensor, like: Tensor) -> Tensor:
        mask = torch.zeros(like.numel(), dtype=torch.float32, device=like.device)
        mask[indices.to(like.device)] = 1.0
        return mask
