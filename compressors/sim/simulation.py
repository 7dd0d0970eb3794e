"""The simulation harness: n workers of one mechanism and its aggregate in one process (Alg. 1
of the 3PC paper), and a gradient-method run on a finite-sum problem with exact bit accounting.

Conventions (the EF21/3PC papers'): x^{t+1} = x^t - gamma g^t; the dense initial round
g_i^0 = grad f_i(x^0) is not counted in rounds or bits; ||grad f(x^t)||^2 of the full objective
is checked before each round, and a run that reaches the tolerance stops before sending. Bits
per worker are reported two ways: ``bits`` counts what carries values (32 per fp32 value, plus
flags), ``bits_with_indices`` adds the index bits of sparsifiers.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..core.mechanism import Mechanism
from ..core.payload import Payload
from .problems import FiniteSum
from ..core.rounds import MoveHistory, Round

DIVERGED = 1e4  # a run whose ||grad f||^2 exceeds this factor times its initial value has diverged


class Cluster:
    """n simulated workers of ``mechanism`` and the aggregate state they feed."""

    def __init__(self, mechanism: Mechanism, workers: int) -> None:
        self.mechanism = mechanism
        self.workers = [mechanism.spawn() for _ in range(workers)]
        self.server: dict[str, Tensor] = {}
        self.t = 0

    @property
    def g(self) -> Tensor:
        """The aggregate direction g^t."""
        return self.server["g"]

    def init(self, grads: Sequence[Tensor]) -> list[Payload]:
        """The dense round: every worker sends grad_i(x^0); g^0 is their mean."""
        n = len(self.workers)
        payloads = [w.init(grads[i], Round(0, i, n)) for i, w in enumerate(self.workers)]
        self.server = self.mechanism.begin(payloads, Round(0, 0, n))
        self.t = 0
        return payloads

    def step(self, grads: Sequence[Tensor], moves: tuple[float, ...] = ()) -> list[Payload]:
        """One compressed round: every worker's payload, folded into g in rank order (with a
        two-stage mechanism, worker i's payload holds its chunk payloads and, as the owner of
        chunk i, the payload it sent back: the bits it sent in the round)."""
        self.t += 1
        n = len(self.workers)
        shared = dict(self.server)
        payloads = [w.step(grads[i], Round(self.t, i, n, moves, shared)) for i, w in enumerate(self.workers)]
        relayed = self.mechanism.fold(self.server, payloads, Round(self.t, 0, n, moves, shared))
        if relayed:  # a two-stage mechanism: worker i also sent, as owner i, its chunk's payload
            payloads = [Payload.merge(p.numel, chunks=p, owner=q) for p, q in zip(payloads, relayed)]
        return payloads


@dataclass
class Trace:
    """One run: ||grad f(x^t)||^2 and the cumulative bits per worker at every iterate."""

    grad_norm_sq: list[float] = field(default_factory=list)
    bits: list[float] = field(default_factory=list)
    bits_with_indices: list[float] = field(default_factory=list)
    init_bits: float = 0.0  # the dense initial round, per worker (not in ``bits``)
    iterates: list[Tensor] = field(default_factory=list)  # x^0, x^1, ... if run(keep_iterates=True)
    converged: bool = False
    diverged: bool = False

    @property
    def rounds(self) -> int:
        """Compressed rounds sent."""
        return len(self.grad_norm_sq) - 1

    def summary(self) -> dict[str, object]:
        reached = self.converged
        return {"converged": reached, "diverged": self.diverged, "rounds": self.rounds,
                "bits_per_worker": self.bits[-1], "bits_with_indices_per_worker": self.bits_with_indices[-1],
                "initial_round_bits_per_worker": self.init_bits,
                "final_grad_norm_sq": self.grad_norm_sq[-1],
                "rounds_to_tol": self.rounds if reached else None,
                "bits_to_tol": self.bits[-1] if reached else None,
                "bits_with_indices_to_tol": self.bits_with_indices[-1] if reached else None}


def run(problem: FiniteSum, mechanism: Mechanism, stepsize: float, *, tol: float, max_iters: int,
        x0: Tensor | None = None, max_bits: float = math.inf, keep_iterates: bool = False) -> Trace:
    """Run x^{t+1} = x^t - stepsize g^t with g from ``mechanism`` until ||grad f||^2 <= tol, the
    run diverges (||grad f||^2 not finite or above ``DIVERGED`` times its initial value),
    ``max_iters`` rounds or ``max_bits`` bits per worker are spent. The step is the fp32
    ``x.add_(g, alpha=-stepsize)`` of ``torch.optim.SGD(foreach=False)``, so a DDP run with the same
    mechanism reproduces the iterates bit for bit (tests/test_parity.py)."""
    x = torch.zeros(problem.dim) if x0 is None else x0.clone().float()
    cluster = Cluster(mechanism, problem.workers)
    grads = problem.worker_grads(x)
    initial = cluster.init(grads)
    history = MoveHistory(mechanism.window)
    trace = Trace(init_bits=sum(p.total_bits() for p in initial) / len(initial))
    bits = bits_idx = 0.0
    while True:
        if keep_iterates:
            trace.iterates.append(x.clone())
        norm_sq = float(grads.mean(0).square().sum())
        trace.grad_norm_sq.append(norm_sq)
        trace.bits.append(bits)
        trace.bits_with_indices.append(bits_idx)
        if norm_sq <= tol:
            trace.converged = True
            return trace
        if not math.isfinite(norm_sq) or norm_sq > DIVERGED * trace.grad_norm_sq[0]:
            trace.diverged = True
            return trace
        if trace.rounds >= max_iters or bits >= max_bits:
            return trace
        g = cluster.g
        x.add_(g, alpha=-stepsize)
        history.record(0, g)
        grads = problem.worker_grads(x)
        payloads = cluster.step(grads, history.moves([0]))
        total = sum(p.total_bits() for p in payloads) / len(payloads)
        index = sum(p.index_bits() for p in payloads) / len(payloads)
        bits += total - index
        bits_idx += total
