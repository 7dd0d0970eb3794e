"""The threepc DDP communication hook: encode locally -> exchange -> decode in rank order.

Per bucket and iteration, on every rank:

* dense round (warm-up iterations, or a bucket whose parameters have no state yet): the worker
  memory is set from the local gradient, the bucket is averaged by one fp32 allreduce, and the
  callback stores the mean as the estimate g;
* compressed round: ``mechanism.step(grad)`` updates the local memory and returns the payload;
  its parts are packed into one uint8 tensor and exchanged by one ``all_gather`` (every rank's
  payload has the size the mechanism's ``spec`` declares); the callback unpacks every rank's
  payload and ``mechanism.aggregate`` folds them into g in rank order; g is the bucket's result.

Every collective is issued here, in the hook's own thread and in the same order on every rank;
the ``.then()`` callbacks only decode. (A collective issued from a callback hangs or mismatches
on gloo once a model has several buckets; torch's PowerSGD hook aborts on gloo for this reason,
pytorch/pytorch#58467.) The decisions that pick a round (iteration count, bucket state present)
are the same on every rank, so all ranks join the same collectives.

This module keeps real (not postponed) annotations: DDP checks that the hook's ``bucket``
parameter is annotated ``dist.GradBucket`` and its result ``Future[Tensor]``.
"""
import torch
import torch.distributed as dist
from torch import Tensor
from torch.futures import Future

from . import wire
from .state import BucketState, ThreePCState

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
    params = bucket.parameters()
    bucket_state = state.bucket_state(params) if state.iteration >= state.warmup_steps else None
    if bucket_state is None:
        fut = _dense_round(state, state.new_bucket_state(params), grad)
    else:
        fut = _compressed_round(state, bucket_state, grad)
    if bucket.is_last():
        state.end_iteration()
    return fut


def _dense_round(state: ThreePCState, bucket_state: BucketState, grad: Tensor) -> Future[Tensor]:
    """Averaged allreduce in fp32 (a copy for fp16/bf16 buckets, so that g starts as the exact
    mean of the workers' fp32 g_i), which sets the worker memory and the estimate g."""
    bucket_state.worker.init(grad)
    group = state.group
    mean = grad.reshape(-1).float() / group.size()  # a new fp32 tensor, reduced in place
    fut = dist.all_reduce(mean, group=group, async_op=True).get_future()
    state.stats.add("dense", mean.numel() * mean.element_size())
    state.stats.dense_equivalent += grad.numel() * grad.element_size()
    state.stats.dense_rounds += 1

    def store_mean(fut: Future) -> Tensor:
        fut.value()  # re-raises a failed collective
        bucket_state.estimate = mean
        return grad.copy_(mean.view_as(grad))

    return fut.then(store_mean)


def _compressed_round(state: ThreePCState, bucket_state: BucketState, grad: Tensor) -> Future[Tensor]:
    worker, numel = bucket_state.worker, grad.numel()
    spec = worker.spec(numel)
    packed = wire.pack(worker.step(grad), spec)
    group = state.group
    gathered = packed.new_empty(group.size() * packed.numel())
    fut = _all_gather_single(gathered, packed, group=group, async_op=True).get_future()
    for part in spec:
        state.stats.add(part.name, part.numel * part.dtype.itemsize)
    state.stats.dense_equivalent += numel * grad.element_size()
    state.stats.compressed_rounds += 1

    def decode(fut: Future) -> Tensor:
        fut.value()  # re-raises a failed collective
        payloads = [wire.unpack(row, spec, numel) for row in gathered.view(group.size(), -1)]
        worker.aggregate(bucket_state.estimate, payloads)
        return grad.copy_(bucket_state.estimate.view_as(grad))

    return fut.then(decode)
