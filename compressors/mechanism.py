"""Stateful mechanisms: a worker's memory and update rule, and how the aggregate absorbs messages.

One instance holds one worker's memory for one tensor (GRACE's "Memory" role plus the update
rule). The contract, shared by the standalone simulation and the DDP hook:

* ``init(grad)``: the dense round. The worker sets its memory from grad_i(x^0); the aggregate
  starts from the exact mean g^0 = (1/n) sum_i grad_i(x^0).
* ``step(grad) -> Payload``: one compressed round on this worker. It updates the worker's
  memory and returns exactly what the worker sends.
* ``aggregate(estimate, payloads)``: the aggregate side (a server, or every DDP rank's replica
  of g) folds all n workers' payloads, in rank order, into ``estimate`` in place.
* ``memory``: the worker's per-coordinate state, flat fp32 tensors of the tensor's length, so
  the hook can split it per parameter for checkpoints and re-bucketing.

The hook owns the collectives; a mechanism declares what it sends through ``spec``.
"""
from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Sequence

from torch import Tensor

from .compressor import Compressor
from .payload import PartSpec, Payload


class Mechanism(ABC):
    """Base of every mechanism: one worker, one tensor."""

    def __init__(self, compressor: Compressor) -> None:
        self.compressor = compressor
        self.memory: dict[str, Tensor] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.compressor!r})"

    def spawn(self) -> Mechanism:
        """A new instance with this configuration and empty memory (one per worker and tensor)."""
        clone = copy.copy(self)
        clone.memory = {}
        return clone

    @abstractmethod
    def init(self, grad: Tensor) -> None:
        """Dense round: set the memory from this worker's gradient."""

    @abstractmethod
    def step(self, grad: Tensor) -> Payload:
        """Compressed round: update the memory and return what this worker sends."""

    def spec(self, numel: int) -> list[PartSpec]:
        """Parts of every payload for a tensor of ``numel`` elements, in wire order."""
        return self.compressor.spec(numel)

    def aggregate(self, estimate: Tensor, payloads: Sequence[Payload]) -> None:
        """g <- g + (1/n) sum_i decode(payload_i), summed in rank order."""
        self.compressor.accumulate(estimate, payloads, 1.0 / len(payloads))
