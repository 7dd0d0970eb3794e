"""How a bucket's payloads travel: one class per collective protocol (the Communicator role).

* ``MeanAllReduce``: payloads the mechanism declares summable (``Mechanism.summable``) go into
  one averaging ``all_reduce``; the aggregate sees one payload, the mean.
* ``AllGather``: fixed-size payloads go into one ``all_gather``; the aggregate sees every
  rank's payload in rank order.
* ``Sized(data)``: payloads that may be empty (a lazy trigger that did not fire) or vary in
  length (a coded stream): a blocking ``all_gather`` of one int32 per rank (the header: the
  payload's size, 0 = silent, or a flag: -1 non-finite, -2 failed) comes first; if nobody
  sends, or some rank raised a flag, no further collective runs; else the ``data`` protocol
  moves the payloads padded to the longest (a silent rank sends zeros).
* ``TwoStage(relay)``: a mechanism that declares ``two_stage`` sends one payload per chunk of
  its tensor (chunk j, owned by rank j). Stage 1: one blocking equal-split
  ``all_to_all_single`` of the chunk payloads, each behind an int32 (its length, or the
  sender's flag) and padded to the longest; each owner then runs ``relay.step`` on the n
  payloads of its chunk, in the hook's thread. Stage 2: one ``all_gather`` of the owners'
  payloads, each behind an int32 (its length, or the owner's flag: an owner's overflow or
  failure is agreed too), which everyone decodes. Every rank receives a slot from every rank
  in both stages, so every rank reads every flag. With fixed-size chunk specs the widths
  follow from the spec; a variable-length spec (a coded stream) first agrees on each stage's
  width by a blocking header (as ``Sized``). The blocking first stage gives up the overlap
  of that bucket's communication with the rest of backward.

Every exchange carries each rank's ``Flags`` (a non-finite gradient, an exception): in the
header, or as a last payload part of two fp32 (``FLAGS``; averaged, they count the ranks), or,
for a one-part averaged payload, in an all_reduce of their own beside it, so that every rank
learns them from the round's collectives and all act alike. What fails in packing a payload
(``wire.pack``) or in the averaged copy of a one-part one, before the collective that carries
the flags, is such an exception too (``Protocol.guarded``): the rank sends its error flag with
zeros of the payload's size (allocated anew: an out-of-memory error may recur there) or, behind
a header, nothing, and the hook raises the failure on every rank; so do building the two-stage
slots and unpacking an owner's chunk between the stages (its flag travels in the second).
Not guarded: the buffers a collective receives into (the gathered rows), the stage-2 slot, and
what follows a size header (the flags have travelled by then).

``choose`` picks one from what the mechanism declares. Every collective is issued in the
hook's thread (``exchange`` returns the future of the last one; callbacks only decode), in the
same order on every rank, in the DDP model's process group, and every tensor of every
collective lives on the bucket's device (gloo accepts CPU and CUDA tensors, NCCL only CUDA).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from typing import NamedTuple, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor
from torch.futures import Future, collect_all

from compressors import PartSpec, Payload

from . import wire
from .stats import CommStats

T = TypeVar("T")

# torch >= 2.13 names it all_gather_single and deprecates all_gather_into_tensor.
all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class Flags(NamedTuple):
    """How many ranks saw a non-finite gradient or payload, and how many failed, in a round."""

    nonfinite: int = 0
    error: int = 0


FLAGS = PartSpec("flags", torch.float32, 2, aligned=True)  # one rank's Flags, the last payload part


class Exchange(NamedTuple):
    """An issued exchange: its future, and how to read the payloads and the flags once it
    completed (payloads None: no rank sent anything, or some rank raised a flag)."""

    future: Future
    read: Callable[[], tuple[list[Payload] | None, Flags]]


def _count(payloads: list[Payload], scale: int = 1) -> tuple[list[Payload], Flags]:
    """Received payloads without their ``FLAGS`` part, and those parts summed (times ``scale``)."""
    total = [0.0, 0.0]
    for p in payloads:
        flags = p.parts.pop(FLAGS.name, None)
        if flags is not None:
            total = [a + b for a, b in zip(total, flags.tolist())]
    return payloads, Flags(*(round(v * scale) for v in total))


def _flag(flags: Flags) -> int:
    """A header's negative flag (-2 failed, -1 non-finite), 0 if none."""
    return -2 if flags.error else -1 if flags.nonfinite else 0


def _done(raised: Flags) -> Exchange:
    """An exchange that ends at its header: every rank saw ``raised`` and skips the round."""
    done: Future = Future()
    done.set_result(None)
    return Exchange(done, lambda: (None, raised))


def on_device(device: torch.device, *tensors: Tensor) -> None:
    """Every collective tensor on the bucket's device (NCCL refuses CPU tensors)."""
    for t in tensors:
        if t.device != device:
            raise RuntimeError(f"threepc protocol error: a collective tensor is on {t.device} but the bucket is on "
                               f"{device}; every payload part must live on the gradient's device")


class Protocol(ABC):
    """Moves one packed payload per rank through ``group``; counts what this rank sends."""

    def __init__(self, group: dist.ProcessGroup, stats: CommStats) -> None:
        self.group, self.stats = group, stats
        self.failure: Exception | None = None  # what ``guarded`` caught: this rank's error flag was sent

    def guarded(self, make: Callable[[], T]) -> T | None:
        """``make()``, or None when it raises (kept in ``failure``): the caller then sends this
        rank's error flag in the round's collectives instead of leaving its peers waiting in them."""
        try:
            return make()
        except Exception as e:  # noqa: BLE001 - agreed through the flags, raised by the hook on every rank
            self.failure = e
            return None

    def exchange(self, payload: Payload, spec: Sequence[PartSpec], device: torch.device,
                 flags: Flags = Flags(), own: Collection[str] = ()) -> Exchange:
        """Issue the collectives for this rank's ``payload`` (parts as ``spec`` declares) and
        ``flags``. ``own``: the parts that are the round's own temporaries, which the exchange may
        overwrite."""
        self.count(payload, spec)
        self.stats.add_control(FLAGS.name, FLAGS.numel * FLAGS.dtype.itemsize)
        spec = [*spec, FLAGS]
        raised = torch.tensor(flags, dtype=torch.float32, device=device)
        packed = self.guarded(lambda: wire.pack(Payload({**payload.parts, FLAGS.name: raised}, payload.numel), spec))
        if packed is None:  # zeros and this rank's error flag, as long as the payload (the spec is fixed-size)
            packed = torch.zeros(_packed_size(spec), dtype=torch.uint8, device=device)
            packed[-_packed_size([FLAGS]):] = torch.tensor(flags._replace(error=1), dtype=torch.float32,
                                                           device=device).view(torch.uint8)
        return self.collective(packed, spec, payload.numel, [packed.numel()] * self.group.size(), writable=True)

    def count(self, payload: Payload, spec: Sequence[PartSpec]) -> None:
        for part in spec:
            self.stats.add(part.name, payload.parts[part.name].numel() * part.dtype.itemsize)

    def header(self, values: list[int], device: torch.device) -> list[list[int]]:
        """Blocking all_gather of this rank's int32 ``values`` (sizes, or a negative flag): every
        rank's row. Blocking, because the sizes decide what follows."""
        n = self.group.size()
        header = torch.tensor(values, dtype=torch.int32, device=device)
        headers = torch.zeros(n * len(values), dtype=torch.int32, device=device)
        on_device(device, header, headers)
        all_gather_single(headers, header, group=self.group)
        self.stats.add("header", header.numel() * header.element_size())
        self.stats.ring_all_gather(header.numel() * header.element_size(), n)
        return headers.view(n, len(values)).tolist()

    def padded(self, packed: Tensor, width: int) -> Tensor:
        """``packed`` with zeros up to ``width`` bytes (counted as padding)."""
        if packed.numel() >= width:
            return packed
        self._pad(width - packed.numel())
        return torch.cat([packed, packed.new_zeros(width - packed.numel())])

    def _pad(self, size: int) -> None:
        if size > 0:
            self.stats.add("padding", size)

    @abstractmethod
    def collective(self, packed: Tensor, spec: Sequence[PartSpec], numel: int, sizes: list[int],
                   writable: bool = False) -> Exchange:
        """One async collective of equal-length uint8 buffers; rank r's payload is the first
        ``sizes[r]`` bytes of its buffer (0: rank r stayed silent and sent zeros). ``writable``:
        ``packed`` may be overwritten (a buffer the exchange built, or a part the round owns)."""


def averaged(part: Tensor, n: int, owned: bool) -> Tensor:
    """``part / n``, in place when the round owns ``part`` (the exchange may overwrite it)."""
    return part.div_(n) if owned else part / n


def plain_allreduce(grad: Tensor, group: dist.ProcessGroup, stats: CommStats) -> Future:
    """DDP's own allreduce of a bucket (``torch.distributed.algorithms.ddp_comm_hooks.
    default_hooks.allreduce_hook``): divided by n in its dtype, summed in place, no flags; counted
    as a dense round (``link_choice``)."""
    n, nbytes = group.size(), grad.numel() * grad.element_size()
    stats.dense_rounds += 1
    stats.add("dense", nbytes)
    stats.ran("all_reduce")
    stats.ring_all_reduce(nbytes, n)
    stats.dense_round(nbytes, n)
    grad.div_(n)
    return dist.all_reduce(grad, group=group, async_op=True).get_future().then(lambda done: done.value()[0])


class MeanAllReduce(Protocol):
    """One averaging all_reduce of fp32 payloads; a silent rank's zeros add nothing.

    A one-part payload (a dense gradient: GD's, any mechanism's dense round) travels alone, and
    its flags by an all_reduce of their own issued just before it (the spec decides, so every
    rank issues the same two): the bucket is not copied to carry 8 bytes, and a part the round
    owns (``own``: the mechanism's fp32 view of the gradient, a ``Payload.scratch`` part, or a
    blank) is averaged in place; so is ``Sized``'s one-part payload (LAG's x - h)."""

    def exchange(self, payload: Payload, spec: Sequence[PartSpec], device: torch.device,
                 flags: Flags = Flags(), own: Collection[str] = ()) -> Exchange:
        if len(spec) != 1:
            return super().exchange(payload, spec, device, flags)
        wire.check(payload, spec)
        self.count(payload, spec)
        self.stats.add_control(FLAGS.name, FLAGS.numel * FLAGS.dtype.itemsize)
        n, name = self.group.size(), spec[0].name
        part = payload.parts[name].reshape(-1)
        mean = self.guarded(lambda: averaged(part, n, name in own))
        if mean is None:  # zeros and this rank's error flag
            mean, flags = torch.zeros(part.numel(), dtype=torch.float32, device=device), flags._replace(error=1)
        raised = torch.tensor(flags, dtype=torch.float32, device=device)
        on_device(device, raised, mean)
        self.stats.ran("all_reduce")
        self.stats.ring_all_reduce(raised.numel() * raised.element_size(), n)
        self.stats.ring_all_reduce(mean.numel() * mean.element_size(), n)
        counted = dist.all_reduce(raised, group=self.group, async_op=True).get_future()
        future = dist.all_reduce(mean, group=self.group, async_op=True).get_future()
        return Exchange(collect_all([counted, future]),
                        lambda: ([Payload({name: mean}, payload.numel)], Flags(*(round(v) for v in raised.tolist()))))

    def collective(self, packed: Tensor, spec: Sequence[PartSpec], numel: int, sizes: list[int],
                   writable: bool = False) -> Exchange:
        self.stats.ran("all_reduce")
        self.stats.ring_all_reduce(packed.numel(), self.group.size())
        mean = packed.view(torch.float32)  # reduced in place: a buffer of its own or the round's, else a copy
        mean = mean.div_(self.group.size()) if writable else mean / self.group.size()
        on_device(packed.device, mean)
        future = dist.all_reduce(mean, group=self.group, async_op=True).get_future()
        return Exchange(future, lambda: _count([wire.unpack(mean.view(torch.uint8), spec, numel)],
                                               self.group.size()))


class AllGather(Protocol):
    """One all_gather; row r of the result holds rank r's payload."""

    def collective(self, packed: Tensor, spec: Sequence[PartSpec], numel: int, sizes: list[int],
                   writable: bool = False) -> Exchange:
        self.stats.ran("all_gather")
        self.stats.ring_all_gather(packed.numel(), self.group.size())
        gathered = packed.new_empty(self.group.size() * packed.numel())
        on_device(packed.device, gathered)
        future = all_gather_single(gathered, packed, group=self.group, async_op=True).get_future()
        rows = gathered.view(self.group.size(), -1)
        return Exchange(future, lambda: _count([wire.unpack(row[:size], spec, numel) if size else Payload({}, numel)
                                                for row, size in zip(rows, sizes)]))


class Sized(Protocol):
    """A size header first, then ``data`` on payloads padded to the longest (or nothing)."""

    def __init__(self, data: Protocol) -> None:
        super().__init__(data.group, data.stats)
        self.data = data

    def exchange(self, payload: Payload, spec: Sequence[PartSpec], device: torch.device,
                 flags: Flags = Flags(), own: Collection[str] = ()) -> Exchange:
        silent = not payload.parts
        packed = torch.zeros(0, dtype=torch.uint8, device=device) if silent else self.guarded(
            lambda: wire.pack(payload, spec))
        if packed is None:  # the header carries this rank's error flag
            packed, flags = torch.zeros(0, dtype=torch.uint8, device=device), flags._replace(error=1)
        on_device(device, packed)
        headers = [row[0] for row in self.header([_flag(flags) or packed.numel()], device)]  # a flagged rank sends nothing
        sizes, raised = [max(h, 0) for h in headers], Flags(headers.count(-1), headers.count(-2))
        self.stats.silent_rounds += silent
        width = max(sizes)
        if width == 0 or any(raised):  # nothing to send, or a round every rank skips
            self.stats.skipped_rounds += width == 0
            return _done(raised)
        if not silent:
            self.count(payload, spec)
        # a one-part payload's pack is a view of the part (a dtype view: no ``_base`` to tell)
        writable = silent or len(spec) > 1 or packed.numel() < width or spec[0].name in own
        packed = self.padded(packed, width)
        return self.data.collective(packed, spec, payload.numel, sizes, writable)

    def collective(self, packed: Tensor, spec: Sequence[PartSpec], numel: int, sizes: list[int],
                   writable: bool = False) -> Exchange:
        return self.data.collective(packed, spec, numel, sizes, writable)


class Relay(NamedTuple):
    """What a two-stage round needs besides the payload: every chunk's length (chunk j is owned
    by rank j) and this rank's owner step, which takes the n payloads of its chunk (rank order)
    and returns its own payload and flags (it must not raise)."""

    sizes: list[int]
    step: Callable[[list[Payload]], tuple[Payload, Flags]]


_LENGTH = 4  # bytes of the int32 length (or negative flag) in front of each chunk or owner payload


def _packed_size(spec: Sequence[PartSpec]) -> int:
    """Bytes of a packed payload with this fixed-size spec."""
    return sum(part.numel * part.dtype.itemsize for part in spec)


def _framed(length: int, packed: Tensor | None, width: int, device: torch.device) -> list[Tensor]:
    """A slot of ``width`` bytes: the int32 ``length`` (or a negative flag), ``packed``, zeros."""
    head = torch.tensor([length], dtype=torch.int32, device=device).view(torch.uint8)
    body = [] if packed is None else [packed]
    used = _LENGTH + (0 if packed is None else packed.numel())
    return [head, *body, head.new_zeros(width - used)]


def _lengths(rows: Tensor) -> tuple[list[int], Flags]:
    """The int32 in front of each row, and the flags the negative ones raise."""
    lengths = rows[:, :_LENGTH].reshape(-1).clone().view(torch.int32).tolist()
    return lengths, Flags(lengths.count(-1), lengths.count(-2))


def chunk_specs(spec: Sequence[PartSpec], workers: int) -> list[list[PartSpec]]:
    """A two-stage spec's parts ``"<j>.<part>"`` as chunk j's spec, for j < ``workers`` (owner
    j's payload has the same parts)."""
    return [[PartSpec(p.name[len(f"{j}."):], p.dtype, p.numel, p.aligned) for p in spec
             if p.name.startswith(f"{j}.")] for j in range(workers)]


class TwoStage(Protocol):
    """Chunk payloads to their owners (all_to_all), the owners' payloads to everyone (all_gather);
    the spec's parts ``"<j>.<part>"`` are chunk j's, and owner j's payload has chunk j's parts.
    Every slot of either collective starts with an int32: the payload's length, or a rank's
    flag (-1 non-finite, -2 failed). Fixed-size chunk specs (scaled signs, Top-K) fix both
    widths, so each stage is one collective, and every rank reads every rank's flags from the
    slots it receives: stage 1 delivers a slot from every rank to every rank, stage 2 every
    owner's. Variable-length specs (coded streams) first agree on the width by a header."""

    def __init__(self, group: dist.ProcessGroup, stats: CommStats, relay: Relay) -> None:
        super().__init__(group, stats)
        self.relay = relay

    def exchange(self, payload: Payload, spec: Sequence[PartSpec], device: torch.device,
                 flags: Flags = Flags(), own: Collection[str] = ()) -> Exchange:
        specs = chunk_specs(spec, self.group.size())
        fixed = all(wire.fixed_size(s) for s in specs)
        received = self.first(payload, specs, device, flags, fixed)
        if isinstance(received, Flags):
            return _done(received)
        # the owner's step, between the stages; None: unpacking its chunk failed here (its flag travels in stage 2)
        owned, flags = self.relay.step(received) if received is not None else (Payload({}, 0), Flags(error=1))
        return self.second(owned, specs, device, flags, fixed)

    def width(self, sizes: list[int], specs: list[list[PartSpec]], fixed: bool, flags: Flags,
              device: torch.device) -> int | Flags:
        """Payload bytes of a slot: the longest payload any rank may send (fixed specs: from the
        specs alone), or agreed by a blocking header of this rank's longest (or its flag), which
        returns the raised flags instead when some rank raised one."""
        if fixed:
            return max(_packed_size(s) for s in specs)
        heads = [row[0] for row in self.header([_flag(flags) or max(sizes, default=0)], device)]
        raised = Flags(heads.count(-1), heads.count(-2))
        return raised if any(raised) else max(heads)

    def first(self, payload: Payload, specs: list[list[PartSpec]], device: torch.device,
              flags: Flags, fixed: bool) -> list[Payload] | Flags | None:
        """Stage 1 (blocking): the chunk payloads to their owners, each in a slot of the longest
        + 4 bytes (its length, then the payload, then zeros; a flagged rank, or one whose packing
        or slots failed, sends its flag in every slot). This rank's chunk as sent by every rank
        (rank order), the flags raised, or None when unpacking them failed on this rank."""
        n, me, sizes = self.group.size(), self.group.rank(), self.relay.sizes

        def pack() -> tuple[list[Payload], list[Tensor]]:
            chunks = [payload.sub(str(j)) for j in range(n)]
            return chunks, [wire.pack(c, specs[j]) for j, c in enumerate(chunks)]
        made = None if any(flags) else self.guarded(pack)
        if made is None and not any(flags):  # every slot carries this rank's error flag
            flags = flags._replace(error=1)
        chunks, packed = made or ([], [])
        width = self.width([p.numel() for p in packed], specs, fixed, flags, device)
        if isinstance(width, Flags):
            return width
        width += _LENGTH  # never zero elements

        def slots(packed: list[Tensor], flags: Flags) -> Tensor:
            return torch.cat([t for j in range(n) for t in _framed(packed[j].numel() if packed else _flag(flags),
                                                                     packed[j] if packed else None, width, device)])
        buffer = self.guarded(lambda: slots(packed, flags)) if packed else None
        if buffer is None:
            if packed:  # building the slots failed: this rank's error flag in every slot
                chunks, packed, flags = [], [], flags._replace(error=1)
            buffer = slots([], flags)
        for j in range(n):
            if packed:
                self.count(chunks[j], specs[j])
            self._pad(width - _LENGTH - (packed[j].numel() if packed else 0))  # a flagged rank sends zeros
            self.stats.add("header", _LENGTH)
        received = torch.empty_like(buffer)
        on_device(device, buffer, received)
        dist.all_to_all_single(received, buffer, group=self.group)  # blocking: the owner step needs it
        self.stats.ran("all_to_all")
        self.stats.ring_all_to_all(buffer.numel(), n)
        rows = received.view(n, width)
        lengths, raised = _lengths(rows)
        if any(raised):
            return raised
        return self.guarded(lambda: [wire.unpack(row[_LENGTH:_LENGTH + size], specs[me], sizes[me])
                                     for row, size in zip(rows, lengths)])

    def second(self, owned: Payload, specs: list[list[PartSpec]], device: torch.device, flags: Flags,
               fixed: bool) -> Exchange:
        """Stage 2: this owner's payload (or its flag) behind its length to everyone (the
        returned future; reading it raises the flags of any owner that failed)."""
        n, me, sizes = self.group.size(), self.group.rank(), self.relay.sizes
        packed = None if any(flags) else self.guarded(lambda: wire.pack(owned, specs[me]))
        if packed is None and not any(flags):  # its slot carries this owner's error flag
            flags = flags._replace(error=1)
        width = self.width([] if packed is None else [packed.numel()], specs, fixed, flags, device)
        if isinstance(width, Flags):
            return _done(width)
        width += _LENGTH
        if packed is not None:
            self.count(owned, specs[me])
        self._pad(width - _LENGTH - (packed.numel() if packed is not None else 0))
        self.stats.add("header", _LENGTH)
        row = torch.cat(_framed(_flag(flags) if packed is None else packed.numel(), packed, width, device))
        gathered = row.new_empty(n * width)
        on_device(device, row, gathered)
        self.stats.ran("all_gather")
        self.stats.ring_all_gather(width, n)
        future = all_gather_single(gathered, row, group=self.group, async_op=True).get_future()
        rows = gathered.view(n, width)

        def read() -> tuple[list[Payload] | None, Flags]:
            lengths, raised = _lengths(rows)
            if any(raised):
                return None, raised
            return [wire.unpack(r[_LENGTH:_LENGTH + size], specs[j], sizes[j])
                    for j, (r, size) in enumerate(zip(rows, lengths))], Flags()
        return Exchange(future, read)

    def collective(self, packed: Tensor, spec: Sequence[PartSpec], numel: int, sizes: list[int],
                   writable: bool = False) -> Exchange:
        raise TypeError("TwoStage runs its own collectives in exchange()")


def choose(spec: Sequence[PartSpec], *, summable: bool, lazy: bool, reproducible: bool,
           group: dist.ProcessGroup, stats: CommStats, relay: Relay | None = None) -> Protocol:
    """The protocol for a round: two-stage when a ``relay`` is given (the mechanism declared
    ``two_stage``), averaged if the mechanism declared the payload ``summable`` (and the state
    is not ``reproducible``, which sums in rank order on every rank), sized if a payload may be
    empty (``lazy``) or has a variable-length part."""
    if relay is not None:
        return TwoStage(group, stats, relay)
    data: Protocol = (MeanAllReduce if summable and not reproducible else AllGather)(group, stats)
    return Sized(data) if lazy or not wire.fixed_size(spec) else data
