"""The threepc DDP communication hook: encode locally -> exchange -> decode in rank order.

Per bucket and iteration, on every rank (rank r is worker r of the mechanism):

* dense round (warm-up iterations, or a bucket whose parameters have no state yet):
  ``mechanism.init(grad)`` sets the worker memory and returns the fp32 gradient; the callback
  builds the aggregate state with ``mechanism.start`` (g = the mean gradient);
* compressed round: ``mechanism.step(grad)`` updates the local memory and returns the payload;
  the callback folds every rank's payload into the aggregate with ``mechanism.aggregate``.

Either way the payload's parts are packed into one tensor and exchanged by one collective: an
averaging ``all_reduce`` when every part is ``summable`` (dense vectors, values on a shared
support: the aggregate needs only their mean), else one ``all_gather`` (every rank's payload
has the size the mechanism's ``spec`` declares, the same on every rank). The aggregate's
``"g"`` is the bucket's result.

Every collective is issued here, in the hook's own thread and in the same order on every rank;
the ``.then()`` callbacks only decode. (A collective issued from a callback hangs or mismatches
on gloo once a model has several buckets; torch's PowerSGD hook aborts on gloo for this reason,
pytorch/pytorch#58467.) The decisions that pick a round and a spec (iteration count, bucket
state present, shared coins) are the same on every rank, so all ranks join the same collectives.

This module keeps real (not postponed) annotations: DDP checks that the hook's ``bucket``
parameter is annotated ``dist.GradBucket`` and its result ``Future[Tensor]``.
"""
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor
from torch.futures import Future

from compressors import PartSpec, Payload, Round

from . import wire
from .state import ThreePCState

_GRAD_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# torch >= 2.13 names it all_gather_single and deprecates all_gather_into_tensor.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def threepc_hook(state: ThreePCState, bucket: dist.GradBucket) -> Future[Tensor]:
    """Compress a DDP bucket with ``state.mechanism``.

    Example::

        >>> state = ThreePCState(EF21(TopK(ratio=0.01)), model=ddp_model)
        >>> ddp_model.register_comm_hook(state, threepc_hook)
    """
    grad = bucket.buffer()
    if grad.dtype not in _GRAD_DTYPES:
        raise TypeError(f"threepc hooks compress float32, float16 and bfloat16 gradients; this bucket holds "
                        f"{grad.dtype}. Train in one of those dtypes (e.g. model.float()) or use DDP's default allreduce")
    params, group, numel = bucket.parameters(), state.group, grad.numel()
    bucket_state = state.bucket_state(params) if state.iteration >= state.warmup_steps else None
    if bucket_state is None:
        bucket_state = state.new_bucket_state(params)
        worker = bucket_state.worker
        rnd = Round(state.iteration, group.rank(), group.size())
        fut, unpack = _exchange(state, worker.init(grad, rnd), worker.init_spec(numel), numel, lazy=False,
                                device=grad.device)
        state.stats.dense_rounds += 1

        def finish(payloads: list[Payload] | None) -> None:
            bucket_state.server = worker.start(payloads, rnd)
            state.record_moves(bucket_state)
    else:
        worker = bucket_state.worker
        rnd = Round(state.iteration, group.rank(), group.size(), state.moves(bucket_state))
        spec = worker.spec(numel, rnd)  # before step(): a refused spec leaves the memory untouched
        fut, unpack = _exchange(state, worker.step(grad, rnd), spec, numel, lazy=worker.lazy, device=grad.device)
        state.stats.compressed_rounds += 1

        def finish(payloads: list[Payload] | None) -> None:
            if payloads is not None:  # None: every rank stayed silent, g is unchanged
                worker.aggregate(bucket_state.server, payloads, rnd)
            state.record_moves(bucket_state)
    state.stats.dense_equivalent += numel * grad.element_size()
    if bucket.is_last():
        state.end_iteration()

    def decode(fut: Future) -> Tensor:
        fut.value()  # re-raises a failed collective
        finish(unpack())
        return grad.copy_(bucket_state.server["g"].view_as(grad))

    return fut.then(decode)


def _exchange(state: ThreePCState, payload: Payload, spec: list[PartSpec], numel: int, *,
              lazy: bool, device: torch.device) -> tuple[Future, Callable[[], list[Payload] | None]]:
    """Issue the payload's collectives now (in the hook thread); return the future of the last
    one and how to read every rank's payload once it completes (None: nobody sent anything).

    Fixed-size payloads of a mechanism that always sends go straight into one collective.
    Otherwise (a lazy mechanism's silent rank sends an empty payload, a coded stream has a
    variable length) a blocking all_gather of one int32 per rank (the ``header``) first tells
    every rank who sends how many bytes: nobody -> no payload collective at all; else the
    senders' payloads travel padded to the longest (``padding`` counts the fill, a silent
    rank's zeros included).
    """
    group, stats = state.group, state.stats
    silent = not payload.parts
    packed = None if silent else wire.pack(payload, spec)
    if not lazy and wire.fixed_size(spec):
        _count(stats, payload, spec)
        return _collective(state, packed, spec, numel, [packed.numel()] * group.size())
    sizes = torch.zeros(group.size(), dtype=torch.int32)
    _all_gather_single(sizes, torch.tensor([0 if silent else packed.numel()], dtype=torch.int32), group=group)
    stats.add("header", 4)
    sizes = sizes.tolist()
    if silent:
        stats.silent_rounds += 1
    else:
        _count(stats, payload, spec)
    if max(sizes) == 0:
        stats.skipped_rounds += 1
        done: Future = Future()
        done.set_result(None)
        return done, lambda: None
    width = max(sizes)
    if silent or packed.numel() < width:
        fill = torch.zeros(width, dtype=torch.uint8, device=device)  # the bucket's device
        if not silent:
            fill[:packed.numel()] = packed
        stats.add("padding", width - (0 if silent else packed.numel()))
        packed = fill
    return _collective(state, packed, spec, numel, sizes)


def _count(stats, payload: Payload, spec: list[PartSpec]) -> None:
    for part in spec:
        stats.add(part.name, payload.parts[part.name].numel() * part.dtype.itemsize)


def _collective(state: ThreePCState, packed: Tensor, spec: list[PartSpec], numel: int,
                sizes: list[int]) -> tuple[Future, Callable[[], list[Payload]]]:
    """One async collective of equal-size ``packed`` buffers: an averaging all_reduce if the
    spec is summable (a silent rank's zeros add nothing) and the state is not ``reproducible``,
    else an all_gather whose row r holds rank r's ``sizes[r]`` bytes (0: rank r stayed silent)."""
    group = state.group
    if wire.summable(spec) and not state.reproducible:
        mean = packed.view(torch.float32) / group.size()  # a new tensor, reduced in place
        fut = dist.all_reduce(mean, group=group, async_op=True).get_future()
        return fut, lambda: [wire.unpack(mean.view(torch.uint8), spec, numel)]
    gathered = packed.new_empty(group.size() * packed.numel())
    fut = _all_gather_single(gathered, packed, group=group, async_op=True).get_future()
    rows = gathered.view(group.size(), -1)
    return fut, lambda: [wire.unpack(row[:size], spec, numel) if size else Payload({}, numel)
                         for row, size in zip(rows, sizes)]
