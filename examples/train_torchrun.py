"""A complete torchrun training script with a threepc hook, checkpoints and resume.

    torchrun --standalone --nproc_per_node 2 examples/train_torchrun.py --steps 40 --checkpoint-dir ckpt

Run it again with a larger ``--steps`` and the same ``--checkpoint-dir`` to resume: rank 0 saves
the model and optimizer (model.pt), and every rank saves its own hook state beside it
(hook-rank{RANK}.pt): the hook's memories differ per rank.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

import ddp_hooks
from common import finish, report, toy_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="total optimizer steps, counting resumed ones")
    parser.add_argument("--hook", default="ef21")
    parser.add_argument("--ratio", type=float, default=0.01, help="Top-K ratio")
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("checkpoints"))
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")  # rank, world size, address: from torchrun
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)

    model, data = toy_task()
    model.to(device)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    state = ddp_hooks.register(ddp, args.hook, ratio=args.ratio)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.01)

    model_file = args.checkpoint_dir / "model.pt"
    hook_file = args.checkpoint_dir / f"hook-rank{rank}.pt"
    step = 0
    if model_file.exists():  # resume: the same files on every rank, its own hook state per rank
        checkpoint = torch.load(model_file, map_location=device)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        step = checkpoint["step"]
        state.load_state_dict(torch.load(hook_file, map_location=device))

    sampler = DistributedSampler(data, seed=0)
    loader = DataLoader(data, batch_size=32, sampler=sampler)
    losses = []
    while step < args.steps:
        sampler.set_epoch(step)  # a new shuffle per pass, also after a resume
        for x, y in loader:
            loss = F.mse_loss(ddp(x.to(device)), y.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
            if step == args.steps:
                break

    args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, model_file)
    torch.save(state.state_dict(), hook_file)
    report(rank, state, first_loss=sum(losses[:5]) / 5, last_loss=sum(losses[-5:]) / 5)
    finish()


if __name__ == "__main__":
    main()
