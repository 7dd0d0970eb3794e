"""torch.compile with a threepc hook: register the hook on the DDP model, then compile it.

    torchrun --standalone --nproc_per_node 2 examples/train_compile.py --steps 20

Dynamo's DDPOptimizer splits the compiled graph at DDP's bucket boundaries, so the hook still
runs per bucket while the backward pass goes on. Keep ``bucket_cap_mb >= 1``: smaller buckets
trip an assertion in that pass (torch 2.13).
"""
from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

import ddp_hooks
from common import finish, report, toy_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    args = parser.parse_args()

    dist.init_process_group("gloo")  # CPU; see train_torchrun.py for CUDA
    model, data = toy_task()
    ddp = DistributedDataParallel(model, bucket_cap_mb=1)
    state = ddp_hooks.register(ddp, "ef21", ratio=0.01)  # first register, then compile
    compiled = torch.compile(ddp, backend=args.backend)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.01)

    loader = DataLoader(data, batch_size=32, sampler=DistributedSampler(data, seed=0), drop_last=True)
    losses = []
    for _, (x, y) in zip(range(args.steps), loader):
        loss = F.mse_loss(compiled(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    report(dist.get_rank(), state, first_loss=losses[0], last_loss=losses[-1])
    finish()


if __name__ == "__main__":
    main()
