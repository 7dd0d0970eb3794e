"""Stateless compressors: a tensor to a Payload and back (GRACE's "Compressor" role)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from torch import Tensor

from .payload import PartSpec, Payload
from .rounds import Round

ROUND0 = Round()


class Compressor(ABC):
    """C: R^d -> R^d, applied as ``decompress(compress(x))``.

    *Contractive* (biased) compressors satisfy E||C(x) - x||^2 <= (1 - alpha)||x||^2 (Top-K:
    alpha = K/d); *unbiased* ones satisfy E C(x) = x and E||C(x) - x||^2 <= omega ||x||^2
    (Rand-K scaled by d/K: omega = d/K - 1). ``rnd`` seeds randomised compressors and names the
    worker (Perm-K); deterministic ones ignore it.
    """

    deterministic = True  # C(x) depends on x only (EF21+ needs this)

    @abstractmethod
    def compress(self, x: Tensor, rnd: Round = ROUND0) -> Payload:
        """Encode x (any shape, fp32/fp16/bf16) into what is sent."""

    @abstractmethod
    def decompress(self, payload: Payload, rnd: Round = ROUND0) -> Tensor:
        """The dense fp32 tensor (1-D, ``payload.numel`` elements) that the payload encodes."""

    @abstractmethod
    def spec(self, numel: int, rnd: Round = ROUND0) -> list[PartSpec]:
        """The parts of a payload for a tensor of ``numel`` elements, in wire order."""

    def encode(self, x: Tensor, rnd: Round = ROUND0) -> tuple[Payload, Tensor]:
        """(compress(x), C(x)): the payload and the fp32 vector it decodes to (error feedback
        needs both; a compressor that knows C(x) without decoding overrides this)."""
        payload = self.compress(x, rnd)
        return payload, self.decompress(payload, rnd)

    def compress_difference(self, x: Tensor, y: Tensor, rnd: Round = ROUND0) -> Payload:
        """compress(x - y) (3PCv2's and MARINA's Q of a gradient's change); a compressor whose
        support does not depend on the values (Rand-K, Perm-K) gathers both at it instead of
        forming the dense difference."""
        return self.compress(x - y, rnd)

    def residual(self, v: Tensor, rnd: Round = ROUND0) -> tuple[Payload, Tensor]:
        """(compress(v), v - C(v)) for error feedback. ``v`` is the caller's own flat fp32
        temporary: an override may write the residual into it (a sparsifier subtracts its K
        kept entries in place instead of decoding a dense C(v))."""
        payload, decoded = self.encode(v, rnd)
        return payload, v - decoded

    def shared_start(self, g: Tensor) -> dict[str, Tensor]:
        """This compressor's part of the aggregate state after the dense round, from g^0 (flat fp32
        tensors, one entry per coordinate, so the hook splits them per parameter like ``g``);
        every worker reads it in ``Round.shared``. Most compressors keep none."""
        return {}

    def shared_update(self, server: dict[str, Tensor], payloads: Sequence[Payload], rnd: Round = ROUND0) -> None:
        """Update ``shared_start``'s entries of ``server`` from a round's payloads (the n payloads
        in rank order, or their mean when they travelled by an averaging allreduce)."""

    def alpha(self, numel: int) -> float:
        """Contraction parameter alpha on R^numel."""
        raise ValueError(f"{self!r} is not contractive: use it where an unbiased compressor is expected "
                         "(MARINA, 3PCv2's Q), or scale it down (e.g. RandK(..., scaled=False))")

    def omega(self, numel: int, workers: int = 1) -> float:
        """Variance parameter omega of an unbiased compressor on R^numel (with ``workers`` workers)."""
        raise ValueError(f"{self!r} is biased: use it where a contractive compressor is expected "
                         "(EF21, CLAG, 3PCv2's C), or use an unbiased one (RandK(..., scaled=True), PermK)")

    def accumulate(self, out: Tensor, payloads: Sequence[Payload], alpha: float, rnd: Round = ROUND0) -> None:
        """out += alpha * sum_r decompress(payloads[r]) (payload r from worker r), in rank order;
        an empty payload (a worker that stayed silent) adds nothing."""
        for r, payload in enumerate(payloads):
            if payload.parts:
                out.view(-1).add_(self.decompress(payload, rnd.of(r)), alpha=alpha)

    def add_to(self, out: Tensor, payload: Payload, rnd: Round = ROUND0) -> None:
        """out += decompress(payload, rnd): a worker's own payload, ``rnd`` as it was encoded
        with (``accumulate`` reads payload r with worker r's round)."""
        out.view(-1).add_(self.decompress(payload, rnd))

    def mean(self, out: Tensor, payloads: Sequence[Payload], rnd: Round = ROUND0) -> None:
        """out = (1/m) sum_r decompress(payloads[r]) over the m payloads (silent ones add nothing)."""
        out.zero_()
        self.accumulate(out, payloads, 1.0 / len(payloads), rnd)
