"""Hugging Face Accelerate with a threepc hook: register it on the model that
``accelerator.prepare`` returns (a DistributedDataParallel when several processes run).

    torchrun --standalone --nproc_per_node 2 examples/train_accelerate.py --steps 40
    torchrun --standalone --nproc_per_node 2 examples/train_accelerate.py --optimizer adamw

Not ``DistributedDataParallelKwargs(comm_hook=...)``: it takes only Accelerate's
``DDPCommunicationHookType`` names and ignores a callable silently.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader

import ddp_hooks
from common import finish, report, toy_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd",
                        help="adamw: the default hook, which finds the prepared AdamW (inside Accelerate's wrapper)")
    args = parser.parse_args()

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    model, data = toy_task()
    if args.optimizer == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(data, batch_size=32, shuffle=True)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    if args.optimizer == "adamw":  # after prepare: model is the DDP wrapper; the hook finds the AdamW in Accelerate's
        state = ddp_hooks.register(model)  # wrapper at its first backward and takes its Adam mode (optimizer=None: not)
    else:
        state = ddp_hooks.register(model, "ef21", ratio=0.01)

    losses = []
    while len(losses) < args.steps:
        for x, y in loader:
            loss = F.mse_loss(model(x), y)
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            losses.append(loss.item())
            if len(losses) == args.steps:
                break
    report(accelerator.process_index, state, first_loss=losses[0], last_loss=losses[-1],
           mechanism=repr(state.mechanism))
    finish()


if __name__ == "__main__":
    main()
