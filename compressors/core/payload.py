"""What one worker sends for one tensor."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

ORACLE = "oracle."  # prefix of parts the server is assumed to know already (never sent)


@dataclass
class Payload:
    """Named tensors that cross the wire, plus the length of the dense tensor they encode.

    Sizes are the tensors' own bytes: a payload costs exactly what is sent (fp32 values are 32
    bits each, int32 indices 32 bits each). The DDP hook adds its padding and headers on top.
    Parts named ``oracle.*`` model side information that a simulated server has for free
    (3PCv1's previous gradient); they cost nothing and the DDP hook refuses them.
    ``scratch``: parts whose memory the producer allocated for this payload alone (no memory or
    state holds it), which the DDP hook may overwrite once they are sent (an averaging allreduce
    in place).
    """

    parts: dict[str, Tensor]
    numel: int
    scratch: frozenset[str] = frozenset()

    @staticmethod
    def of_temporary(payload: Payload, temporary: Tensor) -> Payload:
        """``payload`` with the parts that are views of ``temporary`` (a tensor its producer
        allocated and holds nowhere else) marked ``scratch``."""
        base = temporary.untyped_storage().data_ptr()
        return Payload(payload.parts, payload.numel, frozenset(
            k for k, t in payload.parts.items() if t.untyped_storage().data_ptr() == base))

    def bits(self) -> dict[str, int]:
        """Bits per sent part, e.g. ``{"values": 32 * k, "indices": 32 * k}``."""
        return {name: t.numel() * t.element_size() * 8 for name, t in self.parts.items()
                if not name.startswith(ORACLE)}

    def total_bits(self) -> int:
        return sum(self.bits().values())

    def index_bits(self) -> int:
        """Bits of the parts that locate values (``*indices``) rather than carry them."""
        return sum(b for name, b in self.bits().items() if name.endswith("indices"))

    @staticmethod
    def merge(numel: int, **named: Payload) -> Payload:
        """One payload holding each of ``named``'s parts under ``"<name>.<part>"``."""
        return Payload({f"{prefix}.{k}": t for prefix, p in named.items() for k, t in p.parts.items()}, numel)

    def sub(self, prefix: str) -> Payload:
        """The parts stored under ``prefix`` by ``merge``."""
        head = prefix + "."
        return Payload({k[len(head):]: t for k, t in self.parts.items() if k.startswith(head)}, self.numel)


@dataclass(frozen=True)
class PartSpec:
    """Shape of one payload part as the receiver expects it: name, dtype and element count
    (``None``: a variable-length part, such as a coded byte stream; it comes last).

    ``aligned``: entry j of this part means the same coordinate on every worker (a dense
    vector, or values on a support all workers share), so the part's mean over the workers is
    meaningful. Whether a payload may travel as that mean (one averaging allreduce) is the
    mechanism's decision (``Mechanism.summable``): its aggregate must also be linear.
    """

    name: str
    dtype: torch.dtype
    numel: int | None
    aligned: bool = False

    def prefixed(self, prefix: str) -> PartSpec:
        return PartSpec(f"{prefix}.{self.name}", self.dtype, self.numel, self.aligned)
