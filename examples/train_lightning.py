"""PyTorch Lightning with a threepc hook: the ThreePCCallback registers it when fitting starts.

    python examples/train_lightning.py --steps 40     # Lightning starts the second process
    python examples/train_lightning.py --optimizer adamw  # the callback tells the hook the AdamW

Not ``DDPStrategy(ddp_comm_hook=...)``: Lightning registers that hook only on CUDA and drops it
silently on CPU.
"""
from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from common import finish, report, toy_task
from ddp_hooks.lightning import ThreePCCallback


class Regression(pl.LightningModule):
    def __init__(self, model: torch.nn.Module, optimizer: str) -> None:
        super().__init__()
        self.model, self.optimizer = model, optimizer
        self.losses: list[float] = []

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self.model(x), y)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer == "adamw":
            return torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=0.01)
        return torch.optim.SGD(self.parameters(), lr=0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd",
                        help="adamw: the callback registers the default hook told the optimizer")
    args = parser.parse_args()

    model, data = toy_task()
    module = Regression(model, args.optimizer)
    threepc = ThreePCCallback() if args.optimizer == "adamw" else ThreePCCallback("ef21", ratio=0.01)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=args.steps, callbacks=[threepc],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, DataLoader(data, batch_size=32, shuffle=True))  # Lightning adds a DistributedSampler
    report(trainer.global_rank, threepc.state, first_loss=module.losses[0], last_loss=module.losses[-1],
           mechanism=repr(threepc.state.mechanism))
    finish()


if __name__ == "__main__":
    main()
