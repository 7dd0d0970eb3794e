"""The threepc DDP communication hook: state lookup -> mechanism step -> protocol exchange ->
aggregate.

Per bucket and iteration, on every rank (rank r is worker r of the mechanism):

* dense round (warm-up iterations, or a bucket whose parameters have no state yet):
  ``mechanism.init(grad)`` sets the worker memory and returns the fp32 gradient; the callback
  builds the aggregate state with ``mechanism.start`` (g = the mean gradient);
* compressed round: ``mechanism.step(grad)`` updates the local memory and returns the payload;
  the callback folds every rank's payload into the aggregate with ``mechanism.aggregate``.

Either way ``protocol.choose`` picks how the payload travels from what the mechanism declares
(summable, lazy, fixed or variable size), and the aggregate's ``"g"`` is the bucket's result.
Every collective is issued here, in the hook's own thread and in the same order on every rank;
the ``.then()`` callback only decodes. (A collective issued from a callback hangs or
mismatches on gloo once a model has several buckets; torch's PowerSGD hook aborts on gloo for
this reason, pytorch/pytorch#58467.) The decisions that pick a round and a spec (iteration
count, bucket state present, shared coins) are the same on every rank.

This module keeps real (not postponed) annotations: DDP checks that the hook's ``bucket``
parameter is annotated ``dist.GradBucket`` and its result ``Future[Tensor]``.
"""
import torch
import torch.distributed as dist
from torch import Tensor
from torch.futures import Future

from compressors import Payload, Round

from . import protocol
from .state import ThreePCState

_GRAD_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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
        spec, payload, lazy = worker.init_spec(numel), worker.init(grad, rnd), False
        state.stats.dense_rounds += 1

        def finish(payloads: list[Payload] | None) -> None:
            bucket_state.server = worker.start(payloads, rnd)
    else:
        worker = bucket_state.worker
        rnd = Round(state.iteration, group.rank(), group.size(), state.history.moves(bucket_state.params),
                    bucket_state.server["g"])
        spec = worker.spec(numel, rnd)  # before step(): a refused spec leaves the memory untouched
        payload, lazy = worker.step(grad, rnd), worker.lazy
        state.stats.compressed_rounds += 1

        def finish(payloads: list[Payload] | None) -> None:
            if payloads is not None:  # None: every rank stayed silent, g is unchanged
                worker.aggregate(bucket_state.server, payloads, rnd)
    exchange = protocol.choose(spec, summable=worker.summable(spec), lazy=lazy, reproducible=state.reproducible,
                               group=group, stats=state.stats).exchange(payload, spec, grad.device)
    state.stats.dense_round(numel * grad.element_size(), group.size())
    if bucket.is_last():
        state.end_iteration()

    def decode(fut: Future) -> Tensor:
        fut.value()  # re-raises a failed collective
        finish(exchange.payloads())
        state.record_moves(bucket_state)
        return grad.copy_(bucket_state.server["g"].view_as(grad))

    return exchange.future.then(decode)
