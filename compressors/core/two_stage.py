"""Two-stage compressed allreduce: every worker compresses chunk j of its vector for the chunk's
owner j, each owner compresses the mean of its chunk again, and everyone decodes the owners'
chunks (DeepSpeed's compressed allreduce for 1-bit Adam, Tang et al. 2021, arXiv 2102.02888;
error feedback on the compressed broadcast as in EF21-P, Gruntkowska et al. 2023, arXiv 2209.15218).

One round with n workers and a tensor of d entries split into n contiguous chunks (``chunks``:
chunk j, owned by worker j, is a deterministic function of (d, n)):

1. worker i: v_i = grad_i + gamma e_i; for every chunk j, the payload of Q(v_i[j]);
   e_i <- v_i - (the decoded chunks). ``step`` returns the n chunk payloads as one ``Payload``
   (parts ``"<j>.<part>"``).
2. the chunk payloads go to their owners (DDP: one all_to_all).
3. owner j (``relay``): u = (1/n) sum_i decode(payload_i[j]) + s_j, sends the payload of Q(u),
   s_j <- u - Q(u) (the owner's, or server, error). s_j is written only if u and the new error
   are finite; otherwise ``relay`` returns None and writes nothing.
4. everyone (``collect``): g[j] = decode(owner j's payload) for every j, bit-identical on
   every rank.

Each worker sends n payloads of d/n entries and one more of d/n: link bytes and decoding per
rank stay O(d) as n grows, where an all_gather of whole payloads moves and decodes n of them.

Where the owners' errors live: in DDP, worker j's memory ``s`` (d entries, fp32, zero outside the
chunk it owns, so the hook splits it per parameter for checkpoints like every memory). In the
simulation, whose ``fold`` receives every worker's stage-1 payload at once, the aggregate state
holds them all (``OWNER_ERROR``: the sum over workers of their ``s``). Both run the same owner
step (``_owner``), so a DDP run equals the simulation bit for bit (tests/test_parity.py).

Chunk ownership follows the compression unit's length: if a unit changes (another bucket
layout without the checkpoint's ``layout``), a worker's s outside the chunk it now owns is never
read again (that part of the owners' error is dropped, once); on another world size the hook
rebuilds the memory in a dense round (``ddp_hooks.state``). Each worker stores d entries of s of
which it uses d/n.

Randomised compressors (stochastic rounding) get their own stream per (worker, chunk) and per
owner: worker i's chunk j is encoded as worker i + n (j + 1)'s round, owner j's as worker
n (n + 1) + j's (``Round.key`` mixes the worker index).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .compressor import ROUND0, Compressor
from .mechanism import Mechanism, all_finite, flat, mean_of
from .memory import Error
from .payload import PartSpec, Payload
from .rounds import Round

OWNER_ERROR = "owner_error"  # the simulation's aggregate state: every owner's s, side by side


def chunks(numel: int, workers: int) -> list[tuple[int, int]]:
    """[start, stop) of chunk j (owned by worker j) for j < workers: lengths differ by at most
    one, the longer ones first; empty chunks when numel < workers."""
    base, extra = divmod(numel, workers)
    bounds, start = [], 0
    for j in range(workers):
        stop = start + base + (j < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


def _sender(rnd: Round, worker: int, chunk: int) -> Round:
    """The round in which ``worker`` encodes ``chunk`` (its own randomness per chunk)."""
    return rnd.of(worker + rnd.workers * (chunk + 1))


def _owner_round(rnd: Round, chunk: int) -> Round:
    """The round in which the owner of ``chunk`` encodes it again."""
    return rnd.of(rnd.workers * (rnd.workers + 1) + chunk)


@dataclass
class OwnerError(Error):
    """e_i, the worker's error, and s: its error as the owner of a chunk (zero elsewhere)."""

    s: Tensor


class TwoStage(Mechanism):
    """Error feedback on both stages of a compressed allreduce with ``compressor`` Q (see the
    module's docstring); ``gamma`` decays the worker's error (v_i = grad_i + gamma e_i, as CO3).
    Memory: e_i and s. DDP runs it with ``ddp_hooks.protocol.TwoStage`` (``two_stage``)."""

    two_stage = True
    memory_type = OwnerError
    memory: OwnerError
    written_in_place = frozenset({"s"})  # the owner's error, one chunk of it (e_i is replaced)

    def __init__(self, compressor: Compressor, gamma: float = 1.0) -> None:
        super().__init__(compressor)
        self.gamma = gamma

    def __repr__(self) -> str:
        return f"TwoStage({self.compressor!r}, gamma={self.gamma})"

    def setup(self, grad: Tensor) -> OwnerError:
        return OwnerError(grad.zero_(), torch.zeros_like(grad))

    @staticmethod
    def chunks(numel: int, workers: int) -> list[tuple[int, int]]:
        return chunks(numel, workers)

    def chunk_spec(self, numel: int, rnd: Round = ROUND0) -> list[PartSpec]:
        """The parts of one chunk's payload (both stages) for a chunk of ``numel`` entries."""
        return self.compressor.spec(numel, rnd)

    def spec(self, numel: int, rnd: Round = ROUND0) -> list[PartSpec]:
        return [part.prefixed(str(j)) for j, (lo, hi) in enumerate(self.chunks(numel, rnd.workers))
                for part in self.chunk_spec(hi - lo, rnd)]

    @staticmethod
    def split(payload: Payload, bounds: Sequence[tuple[int, int]]) -> list[Payload]:
        """A stage-1 payload as its chunk payloads (chunk j: ``numel`` the chunk's length)."""
        return [Payload(payload.sub(str(j)).parts, hi - lo) for j, (lo, hi) in enumerate(bounds)]

    # -- stage 1: every worker -------------------------------------------------------------
    def step(self, grad: Tensor, rnd: Round = ROUND0) -> Payload:
        x, e = flat(grad), self.memory.e_i
        v = x + self.gamma * e if self.gamma != 1.0 else x + e  # a new tensor: becomes v - C(v) chunk by chunk
        sent = {}
        for j, (lo, hi) in enumerate(self.chunks(v.numel(), rnd.workers)):
            sent[str(j)], rest = self.compressor.residual(v[lo:hi], _sender(rnd, rnd.worker, j))
            if rest.data_ptr() != v[lo:hi].data_ptr():  # a compressor that did not write in place
                v[lo:hi] = rest
        self.memory = replace(self.memory, e_i=v)  # only once every chunk encoded: a raising compressor
        return Payload.merge(v.numel(), **sent)     # leaves e_i as it was

    # -- stage 2: the owner of a chunk -----------------------------------------------------
    def _owner(self, received: Sequence[Payload], s: Tensor, rnd: Round, chunk: int) -> Payload | None:
        """Owner ``chunk``'s step on the n payloads of its chunk (rank order) and its error ``s``
        (updated in place): the payload of Q(mean + s), or None (nothing written) if u or the
        new error is not finite."""
        u = mean_of(received, lambda p, i: self.compressor.decompress(p, _sender(rnd, i, chunk)))
        u.add_(s)
        if not all_finite(u):
            return None
        payload, error = self.compressor.residual(u, _owner_round(rnd, chunk))
        if not all_finite(error):
            return None
        s.copy_(error)
        return payload

    def relay(self, received: Sequence[Payload], rnd: Round = ROUND0) -> Payload | None:
        """This worker (``rnd.worker``) as the owner of its chunk: ``received`` holds every
        worker's payload of that chunk in rank order. None: the chunk's mean plus s is not
        finite (the memory is untouched)."""
        lo, hi = self.chunks(self.memory.s.numel(), rnd.workers)[rnd.worker]
        return self._owner(received, self.memory.s[lo:hi], rnd, rnd.worker)

    # -- the result, on every worker -------------------------------------------------------
    def collect(self, server: dict[str, Tensor], relayed: Sequence[Payload], rnd: Round = ROUND0) -> None:
        """g from the owners' payloads (payload j: chunk j)."""
        g = server["g"]
        for j, (lo, hi) in enumerate(self.chunks(g.numel(), len(relayed))):
            g[lo:hi] = self.compressor.decompress(relayed[j], _owner_round(rnd, j))

    def fold(self, server: dict[str, Tensor], payloads: Sequence[Payload], rnd: Round = ROUND0) -> list[Payload]:
        """The simulation's round: every owner's step on the stage-1 ``payloads`` (owners' errors in
        ``server[OWNER_ERROR]``), then ``collect``. Returns the owners' payloads (what the
        simulation counts as each worker's second-stage bits); [] and g = NaN if some owner's
        mean was not finite."""
        g = server["g"]
        s = server.setdefault(OWNER_ERROR, torch.zeros_like(g))
        bounds = self.chunks(g.numel(), len(payloads))
        split = [self.split(p, bounds) for p in payloads]
        relayed = []
        for j, (lo, hi) in enumerate(bounds):
            out = self._owner([parts[j] for parts in split], s[lo:hi], rnd, j)
            if out is None:
                g.fill_(float("nan"))
                return []
            relayed.append(out)
        self.collect(server, relayed, rnd)
        return relayed

    def aggregate(self, server: dict[str, Tensor], payloads: Sequence[Payload], rnd: Round = ROUND0) -> None:
        self.fold(server, payloads, rnd)
