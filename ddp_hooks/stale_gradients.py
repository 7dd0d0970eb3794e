"""The exact SASG rule's reference gradients: each bucket's gradient at the parameters of its
last upload, on the current minibatch (Deng et al. 2021, Eq. (7))."""
from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from compressors import SASG

from .state import ThreePCState


class StaleGradients:
    """A training-step helper for ``SASG(exact=True)``: keeps a copy of the model whose parameters
    are, bucket by bucket, those of the bucket's last upload; before each backward it runs the
    same loss on that copy and writes the gradients into every bucket's memory ``y``, and after
    the backward it refreshes the copy where a bucket uploaded. Cost: one more forward and
    backward per step and one more copy of the parameters.

        >>> stale = StaleGradients(ddp, state)            # before the first step
        >>> loss = stale.backward(lambda m: loss_fn(m(x), y))
        >>> opt.step()
    """

    def __init__(self, ddp: nn.parallel.DistributedDataParallel, state: ThreePCState) -> None:
        if not (isinstance(state.mechanism, SASG) and state.mechanism.exact):
            raise ValueError(f"StaleGradients feeds SASG(exact=True); this state runs {state.mechanism!r}")
        self.ddp, self.state = ddp, state
        self.stale = copy.deepcopy(ddp.module)
        self.live = {id(p): p for p in ddp.module.parameters()}
        self.by_id = {id(p): q for p, q in zip(ddp.module.parameters(), self.stale.parameters())}

    def backward(self, loss_fn: Callable[[nn.Module], Tensor]) -> Tensor:
        """``loss_fn(model)`` on the stale copy (its gradients go to the buckets' ``y``), then on
        the DDP model with ``backward()``; returns the DDP loss."""
        if self.state.buckets:
            self.stale.zero_grad(set_to_none=False)
            loss_fn(self.stale).backward()
            for bucket in self.state.buckets:
                grads = [self.by_id[p].grad for p in bucket.params]
                bucket.worker.set_reference(torch.cat([g.reshape(-1) for g in grads]))
        loss = loss_fn(self.ddp)
        loss.backward()
        with torch.no_grad():
            for bucket in self.state.buckets:
                if bucket.worker.uploaded:
                    for p in bucket.params:
                        self.by_id[p].copy_(self.live[p])
        return loss
