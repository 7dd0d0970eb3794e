"""SASG: sparse and adaptive stochastic gradient (Deng, Li, Sun, Yang, Wang 2021, arXiv 2112.04088)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import kernels
from ..core.compressor import ROUND0, Compressor
from ..core.error_feedback import compensated
from ..core.mechanism import KeepsPeers, flat
from ..core.memory import Error, reusable
from ..core.payload import Payload
from ..core.rounds import Round


@dataclass
class SASGMemory(Error):
    """e_i, y_i (the gradient the trigger compares with) and the count of consecutive skips
    (repeated per coordinate so that the memory splits per parameter)."""

    y: Tensor
    skips: Tensor


class SASG(KeepsPeers):
    """SASG in gradient units (e = the paper's error / lr), worker i with error e_i, the gradient
    it compares against y_i and a count of consecutive skips:

        upload  if  t <= D,  or i skipped D rounds in a row,  or
                    ||grad f_i(x^t) - y_i||^2 > (1/c) sum_{d=1..D} ||g^{t-d}||^2;
        then    v = grad f_i(x^t) + e_i,  Delta_i = C(v) (Top-K),  e_i <- v - Delta_i;
        else    stay silent: the aggregate reuses the stale Delta_i, e_i is untouched;
        g^{t+1} = (1/n) sum_i Delta_i.

    The paper's rule (Alg. 1, Eq. (7)) compares with (1/(lr^2 M^2)) sum_d xi_d ||theta^{k+1-d} -
    theta^{k-d}||^2 where the step theta^{k+1} - theta^k = -lr sum_m Delta_m sums the M workers;
    in DDP's mean convention that step is -lr M g^k, so the right side is sum_d xi_d ||g^{k-d}||^2
    in units of g: xi_d = 1/c (default c = D = 10). ``Round.moves`` carries the ||g^{t-d}||^2.

    y_i, two variants:
    * ``exact=False`` (hook only): y_i is the gradient of i's last upload (LAG-WK's rule); on
      minibatches it also differs by the batch noise, so the worker uploads more often.
    * ``exact=True`` (the paper's): y_i is grad f_i at i's parameters of its last upload, on the
      current minibatch; ``ddp_hooks.StaleGradients`` computes it with a second forward and
      backward on a stale copy of the model (one more backward per step, d more floats) and
      writes it into the memory before the hook runs. On full batches both variants coincide.

    Memory per worker: e_i, y_i and the skip count (d floats each, the count repeated so that
    memories split per parameter); the aggregate keeps every worker's stale Delta_r ("peer.r",
    n x d floats on every DDP rank, like EF21+). Not a 3PC.
    """

    lazy = True
    written_in_place: frozenset[str] = frozenset()
    _spare: tuple[Tensor | None, Tensor | None, Tensor | None] = (None, None, None)  # e_i, y, skips before

    def __init__(self, compressor: Compressor, *, window: int = 10, c: float | None = None,
                 exact: bool = False) -> None:
        if window < 1:
            raise ValueError(f"SASG window D must be at least 1, got {window}")
        super().__init__(compressor)
        self.window, self.c, self.exact = window, float(window if c is None else c), exact
        if self.c <= 0:
            raise ValueError(f"SASG c must be positive, got {self.c}")

    def __repr__(self) -> str:
        return f"SASG({self.compressor!r}, window={self.window}, c={self.c}, exact={self.exact})"

    memory_type = SASGMemory
    memory: SASGMemory

    def setup(self, grad: Tensor) -> SASGMemory:
        return SASGMemory(torch.zeros_like(grad), grad, torch.zeros_like(grad))

    @property
    def uploaded(self) -> bool:
        """Whether the last round (or the dense round) sent a payload."""
        return float(self.memory.skips[0]) == 0.0

    def set_reference(self, grad: Tensor) -> None:
        """The exact rule's y_i: grad f_i at the parameters of i's last upload, on the current
        minibatch (``ddp_hooks.StaleGradients`` computes it before each step)."""
        if not self.exact:
            raise ValueError(f"{self!r} compares with the gradient of its last upload; set_reference is for "
                             "SASG(exact=True)")
        self.memory.y.copy_(grad.reshape(-1))

    def triggered(self, x: Tensor, rnd: Round) -> bool:
        skips = int(self.memory.skips.max()) if self.memory.skips.numel() else 0
        if rnd.t <= self.window or skips >= self.window:
            return True
        return float(kernels.squared_distances(x, [self.memory.y])) > sum(rnd.moves[:self.window]) / self.c

    def step(self, grad: Tensor, rnd: Round = ROUND0) -> Payload:
        """The rule above, writing the new e_i, y and skip count into the tensors of the round
        before last (``core.memory.reusable``), never into the memory it replaces."""
        x, old = flat(grad), self.memory
        spare_e, spare_y, spare_s = self._spare

        def buffer(spare: Tensor | None, like: Tensor, *busy: Tensor) -> Tensor:
            return reusable(spare, like.numel(), like.device, busy=(old.e_i, old.y, old.skips, *busy)).view_as(like)

        if not self.triggered(x, rnd):
            self._spare = (spare_e, spare_y, old.skips)
            self.memory = SASGMemory(old.e_i, old.y, torch.add(old.skips, 1, out=buffer(spare_s, old.skips)))
            return Payload({}, x.numel())
        payload, error = compensated(self.compressor, old.e_i, x, rnd, out=buffer(spare_e, old.e_i).view(-1))
        y = old.y if self.exact else buffer(spare_y, old.y, error).copy_(x.view_as(old.y))
        skips = buffer(spare_s, old.skips, error, y).zero_()
        self._spare = (old.e_i, spare_y if y is old.y else old.y, old.skips)
        self.memory = SASGMemory(error.view_as(old.e_i), y, skips)
        return payload

    def aggregate(self, server: dict[str, Tensor], payloads: Sequence[Payload], rnd: Round = ROUND0) -> None:
        for r, p in enumerate(payloads):
            if p.parts:
                self.replace_peer(server, r, self.compressor.decompress(p, rnd.of(r)), len(payloads))
