"""Payloads to bytes and back: what one rank puts into a collective (``protocol`` moves it).

A payload's parts are laid end to end as raw bytes in the order of the mechanism's spec
(e.g. fp32 values, then int32 indices), so one uint8 tensor carries them in one all_gather.
A part whose spec has ``numel=None`` (a coded byte stream) has a variable length: it must be
the last part, and its length is what remains of the buffer.
"""
from __future__ import annotations

import torch
from torch import Tensor

from compressors import PartSpec, Payload


def check(payload: Payload, spec: list[PartSpec]) -> None:
    """A RuntimeError unless the payload has exactly the spec's parts, each of the declared dtype
    and length (the hook calls it where a failure is agreed, so a mechanism whose step() and
    spec() disagree raises on every rank rather than leaving its peers in a collective)."""
    names = {part.name for part in spec}
    extra, missing = set(payload.parts) - names, names - set(payload.parts)
    if extra:
        raise RuntimeError(f"payload parts {sorted(extra)} are not in the mechanism's spec: a DDP payload must "
                           "declare everything it sends (side information such as oracle.* parts is simulation only)")
    if missing:
        raise RuntimeError(f"payload parts {sorted(missing)} of the mechanism's spec are missing: its step() and "
                           "spec() disagree")
    for part in spec:
        t = payload.parts[part.name]
        if t.dtype != part.dtype or (part.numel is not None and t.numel() != part.numel):
            raise RuntimeError(f"payload part {part.name!r} is {t.dtype}[{t.numel()}] but the mechanism declared "
                               f"{part.dtype}[{part.numel}]: its step() and spec() disagree")


def pack(payload: Payload, spec: list[PartSpec]) -> Tensor:
    """The payload's parts, in spec order, as one flat uint8 tensor."""
    check(payload, spec)
    chunks = [payload.parts[part.name].reshape(-1).contiguous().view(torch.uint8) for part in spec]
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)  # one part: no copy


def fixed_size(spec: list[PartSpec]) -> bool:
    """Whether every payload with this spec has the same size (no variable-length part)."""
    variable = [i for i, part in enumerate(spec) if part.numel is None]
    if variable and variable != [len(spec) - 1]:
        raise RuntimeError(f"only the last payload part may have a variable length, got {[p.name for p in spec]}")
    return not variable


def unpack(buffer: Tensor, spec: list[PartSpec], numel: int) -> Payload:
    """Inverse of ``pack``: the payload encoded in ``buffer`` (a uint8 tensor holding exactly
    one packed payload)."""
    parts, offset = {}, 0
    for part in spec:
        size = part.numel * part.dtype.itemsize if part.numel is not None else buffer.numel() - offset
        raw = buffer[offset:offset + size]
        if raw.storage_offset() % part.dtype.itemsize:
            raw = raw.clone()  # reinterpreting needs an aligned start
        parts[part.name] = raw.view(part.dtype)
        offset += size
    return Payload(parts, numel)
