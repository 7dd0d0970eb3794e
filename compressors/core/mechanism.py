"""Stateful mechanisms: a worker's memory and update rule, and how the aggregate absorbs messages.

One instance holds one worker's memory for one tensor (GRACE's "Memory" role plus the update
rule); any instance can also run the aggregate side (a server, or every DDP rank's replica).
The contract, shared by the simulation harness and the DDP hook:

* ``init(grad, rnd) -> Payload``: the dense round. The worker sets its memory from
  grad_i(x^0) and sends it; ``start(payloads, rnd)`` builds the aggregate state, whose
  ``"g"`` is g^0 = (1/n) sum_i grad_i(x^0).
* ``step(grad, rnd) -> Payload``: one round on this worker: update the memory and return
  exactly what the worker sends (``spec(numel, rnd)`` declares its parts in advance, the same
  on every worker, so that DDP can size its collective).
* ``aggregate(server, payloads, rnd)``: fold the n payloads (payload r from worker r, in rank
  order) into the aggregate state; ``server["g"]`` is the new direction g^{t+1}.
* ``memory`` (a typed ``Memory``) and the aggregate state are flat fp32 tensors with one entry
  per coordinate, so the hook can split them per parameter for checkpoints and re-bucketing.

* ``begin``/``fold`` are what the simulation and the hook call: ``start``/``aggregate`` plus
  the compressor's shared state (``Compressor.shared_start``/``shared_update``, e.g. the
  support every worker uses next round), kept in the aggregate state.

How payloads combine is the mechanism's declaration: ``summable(spec)`` is true when the
aggregate is linear in the payloads (``linear``) and every part is aligned across workers;
then DDP sends one averaging allreduce and passes ``aggregate`` a single payload, the mean.
"""
from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

from .identity import Identity
from .compressor import ROUND0, Compressor
from .memory import Memory
from .payload import PartSpec, Payload
from .rounds import Round

DENSE = Identity()


def flat(grad: Tensor) -> Tensor:
    """The gradient as a flat fp32 tensor (a view when it already is one)."""
    return grad.detach().reshape(-1).float()


def all_finite(*tensors: Tensor) -> bool:
    """Every entry of every floating-point tensor finite. One summing pass: a NaN or an infinity
    makes the fp32 sum non-finite; only then (or if finite values overflowed the sum) the exact
    elementwise test decides. Several tensors on one device are read back at once (a GPU
    synchronises once, not per tensor)."""
    floats = [t for t in tensors if t.is_floating_point()]
    if len(floats) > 1 and len({t.device for t in floats}) == 1 and \
            bool(torch.isfinite(torch.stack([t.sum(dtype=torch.float32) for t in floats])).all()):
        return True
    return all(bool(torch.isfinite(t.sum(dtype=torch.float32))) or bool(torch.isfinite(t).all()) for t in floats)


def mean_of(payloads: Sequence[Payload], decode) -> Tensor:
    """(1/n) sum_r decode(payload_r, r), summed in rank order."""
    total = decode(payloads[0], 0).clone()
    for r, p in enumerate(payloads[1:], start=1):
        total += decode(p, r)
    return total.div_(len(payloads))


class Mechanism(ABC):
    """Base of every mechanism: one worker, one tensor.

    ``lazy``: ``step`` may return an empty payload (the worker stays silent); ``aggregate``
    must then treat empty payloads as "no change from this worker", and a round in which every
    payload is empty must leave the aggregate state as it is (DDP skips it).
    ``linear``: ``aggregate`` depends on the payloads only through their mean (weight
    1/len(payloads)), so aligned payloads may be averaged by the network instead.
    ``window``: how many past aggregate moves ``Round.moves`` the trigger reads (0: none).
    ``memory_type``: the ``Memory`` dataclass of ``memory``.
    ``overwrites``: aggregate-state entries ``aggregate`` sets without reading them from ``server``
    (a caller that keeps the old state may pass uninitialised tensors there instead of copies; the
    old state stays readable in ``Round.shared``, so the caller keeps it until the round is over).
    ``written_in_place``: the memory fields whose tensors ``step`` (or ``relay``) may write in
    place; None: any. A caller that keeps the memory to roll a round back copies these and keeps
    the others by reference (empty: ``step`` replaces ``memory`` and never writes the tensors of
    the memory it replaces; it may write those of the memory before, as EF14 does, so a caller
    holds a memory by reference through one round, not two).
    ``carries_memory``: ``init`` continues the memory the instance already holds instead of
    starting it (a caller may seed a dense round's worker with its tensors' current memory).
    ``two_stage``: payloads travel in two stages, through the owner of each chunk
    (``core.two_stage.TwoStage``: ``chunks``, ``relay``, ``collect``); ``fold`` then returns
    the owners' payloads.
    """

    lazy = False
    linear = True
    window = 0
    two_stage = False
    memory_type: type[Memory] = Memory
    overwrites: frozenset[str] = frozenset()
    written_in_place: frozenset[str] | None = None
    carries_memory = False

    def __init__(self, compressor: Compressor) -> None:
        self.compressor = compressor
        self.memory: Memory | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.compressor!r})"

    def checkpoint_name(self) -> str:
        """What a checkpoint of this mechanism records and a resume must match: its repr, less
        any hyperparameter a resume may change (``AdamNormalized``'s betas)."""
        return repr(self)

    def spawn(self) -> Mechanism:
        """A new instance with this configuration and empty memory (one per worker and tensor)."""
        clone = copy.copy(self)
        clone.__dict__.pop("_spare", None)  # the buffers a step reuses (``core.memory.reusable``) are not shared
        clone.memory = None
        return clone

    # -- the dense round ------------------------------------------------------------------
    def init(self, grad: Tensor, rnd: Round = ROUND0) -> Payload:
        """Dense round: set the memory from this worker's gradient and send it."""
        self.memory = self.setup(flat(grad).clone())
        return DENSE.compress(grad)

    def setup(self, grad: Tensor) -> Memory:
        """The memory after the dense round, from grad_i(x^0) (a private fp32 copy)."""
        return self.memory_type()

    def init_spec(self, numel: int) -> list[PartSpec]:
        return DENSE.spec(numel)

    def start(self, payloads: Sequence[Payload], rnd: Round = ROUND0) -> dict[str, Tensor]:
        """The aggregate state after the dense round: g^0 = mean of the gradients."""
        return {"g": mean_of(payloads, lambda p, r: DENSE.decompress(p))}

    def begin(self, payloads: Sequence[Payload], rnd: Round = ROUND0) -> dict[str, Tensor]:
        """``start``, plus the compressor's shared state (what the simulation and the hook call)."""
        server = self.start(payloads, rnd)
        server.update(self.compressor.shared_start(server["g"]))
        return server

    # -- compressed rounds ----------------------------------------------------------------
    @abstractmethod
    def step(self, grad: Tensor, rnd: Round = ROUND0) -> Payload:
        """Update the memory and return what this worker sends."""

    def spec(self, numel: int, rnd: Round = ROUND0) -> list[PartSpec]:
        """Parts of this round's payload for a tensor of ``numel`` elements, in wire order."""
        return self.compressor.spec(numel, rnd)

    def summable(self, spec: Sequence[PartSpec]) -> bool:
        """Whether payloads of ``spec`` may be combined by averaging them (one allreduce): the
        aggregate is linear and every part is an aligned fp32 vector."""
        return self.linear and all(part.aligned and part.dtype == torch.float32 for part in spec)

    @abstractmethod
    def aggregate(self, server: dict[str, Tensor], payloads: Sequence[Payload], rnd: Round = ROUND0) -> None:
        """Fold the workers' payloads into the aggregate state (``server["g"]`` in place)."""

    def fold(self, server: dict[str, Tensor], payloads: Sequence[Payload],
             rnd: Round = ROUND0) -> list[Payload] | None:
        """``aggregate``, then the compressor's shared state for the next round (what the
        simulation and the hook call). A ``two_stage`` mechanism returns what its chunk owners
        sent back (the simulation counts those bits too)."""
        self.aggregate(server, payloads, rnd)
        self.compressor.shared_update(server, payloads, rnd)
        return None

    def presented(self, g: Tensor) -> float:
        """The factor the hook multiplies the aggregate ``g`` by when it leaves it in the bucket
        (the parameters' ``.grad``): 1 (the Adam mode rescales it, ``AdamNormalized.presented``)."""
        return 1.0

    def constants(self, numel: int, workers: int = 1) -> tuple[float, float]:
        """The 3PC constants (A, B) of Richtárik et al. 2022, Def. 3.1, on R^numel with ``workers``
        workers (Perm-K's omega depends on it)."""
        raise ValueError(f"{self!r} is not a three-point compressor, so it has no (A, B) constants")


class KeepsPeers(Mechanism):
    """Mechanisms whose aggregate keeps every worker's last message ("peer.r", n x d floats on
    every DDP rank): not linear, so every round (the dense one too) all-gathers the payloads,
    and g^0 is the mean of the gathered gradients."""

    linear = False

    def start(self, payloads: Sequence[Payload], rnd: Round = ROUND0) -> dict[str, Tensor]:
        server = {f"peer.{r}": DENSE.decompress(p).clone() for r, p in enumerate(payloads)}
        server["g"] = mean_of(payloads, lambda p, r: server[f"peer.{r}"])
        return server

    @staticmethod
    def replace_peer(server: dict[str, Tensor], r: int, message: Tensor, workers: int) -> None:
        """Worker r's message replaces its previous one: g += (message - peer_r) / n, peer_r = message."""
        peer = server[f"peer.{r}"]
        server["g"].add_(message - peer, alpha=1.0 / workers)
        peer.copy_(message)


class Replacing(Mechanism):
    """Mechanisms whose aggregate is a plain mean of decoded messages, g = (1/n) sum_i C(m_i)."""

    overwrites = frozenset({"g"})

    def aggregate(self, server: dict[str, Tensor], payloads: Sequence[Payload], rnd: Round = ROUND0) -> None:
        self.compressor.mean(server["g"], payloads, rnd)
