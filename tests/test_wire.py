"""Payloads survive the trip through one uint8 buffer."""
from __future__ import annotations

import pytest
import torch

from compressors import PartSpec, Payload, TopK
from ddp_hooks import wire


def test_pack_then_unpack_is_identity():
    spec = TopK(k=5).spec(100)
    payload = Payload({"values": torch.randn(5), "indices": torch.randint(0, 100, (5,), dtype=torch.int32)}, 100)
    packed = wire.pack(payload, spec)
    assert packed.dtype == torch.uint8 and packed.numel() == 5 * 4 + 5 * 4
    back = wire.unpack(packed, spec, 100)
    assert torch.equal(back.parts["values"], payload.parts["values"])
    assert torch.equal(back.parts["indices"], payload.parts["indices"])


def test_unpack_handles_parts_at_unaligned_offsets():
    spec = [PartSpec("flags", torch.uint8, 3), PartSpec("values", torch.float32, 2)]
    payload = Payload({"flags": torch.tensor([1, 2, 3], dtype=torch.uint8), "values": torch.tensor([1.5, -2.0])}, 2)
    back = wire.unpack(wire.pack(payload, spec), spec, 2)
    assert back.parts["values"].tolist() == [1.5, -2.0]


def test_pack_rejects_a_payload_that_disagrees_with_its_spec():
    payload = Payload({"values": torch.randn(4), "indices": torch.zeros(4, dtype=torch.int32)}, 100)
    with pytest.raises(RuntimeError, match="step\\(\\) and spec\\(\\) disagree"):
        wire.pack(payload, TopK(k=5).spec(100))


def test_a_variable_length_last_part_takes_the_rest_of_the_buffer():
    spec = [PartSpec("scale", torch.float32, 1), PartSpec("bytes", torch.uint8, None)]
    payload = Payload({"scale": torch.tensor([0.5]), "bytes": torch.arange(7, dtype=torch.uint8)}, 20)
    packed = wire.pack(payload, spec)
    assert not wire.fixed_size(spec) and packed.numel() == 4 + 7
    back = wire.unpack(packed, spec, 20)
    assert back.parts["scale"].tolist() == [0.5] and back.parts["bytes"].tolist() == list(range(7))


def test_only_the_last_part_may_vary_in_length():
    with pytest.raises(RuntimeError, match="only the last payload part"):
        wire.fixed_size([PartSpec("bytes", torch.uint8, None), PartSpec("scale", torch.float32, 1)])
