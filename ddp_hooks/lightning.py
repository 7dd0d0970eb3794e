"""PyTorch Lightning: a callback that registers a threepc hook on the strategy's DDP model when
fitting starts, told the module's optimizer (``configure_optimizers``): with an Adam or AdamW,
the optimizer-aware mode (``ddp_hooks.adam``) and, with no name, its default; with a heavy-ball
momentum SGD and no name, momentum correction (``ddp_hooks.sgd``: its step is wrapped, one step
per synchronised backward).

    >>> trainer = lightning.pytorch.Trainer(strategy="ddp", callbacks=[ThreePCCallback()])
    >>> trainer = lightning.pytorch.Trainer(strategy="ddp", callbacks=[ThreePCCallback("ef21", ratio=0.01)])

Do not pass the hook to ``DDPStrategy(ddp_comm_hook=...)``: Lightning registers that hook only
on CUDA and drops it silently on CPU. This module imports without Lightning installed; the
callback then raises ImportError when built.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from .adam import adam_settings
from .registry import register
from .state import ThreePCState

try:
    from lightning.pytorch import Callback
except ImportError:
    class Callback:  # type: ignore[no-redef]  # stands in so that this module imports
        def __init__(self) -> None:
            raise ImportError("ddp_hooks.lightning.ThreePCCallback needs PyTorch Lightning: pip install lightning")


AWARE = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)  # what register(..., optimizer=) takes


class ThreePCCallback(Callback):
    """Registers ``ddp_hooks.register(ddp, name, optimizer=opt, **options)`` at fit start; the
    hook's state (byte counts in ``state.stats``, per-rank ``state_dict()``) is then
    ``self.state``. ``opt`` is the trainer's optimizer when there is one and it is an Adam, AdamW
    or SGD the mode supports (``aware=False``, or any other optimizer: the plain hook, on raw
    gradients, with a warning when the mode refused it), with the precision plugin's GradScaler.

    Lightning's checkpoints are written by rank 0 only, so they hold no hook state: a resumed
    fit starts the hook afresh (one dense warm-up round). Save ``state.state_dict()`` per rank
    yourself to carry it over.
    """

    def __init__(self, name: str | None = None, *, aware: bool = True, **options: object) -> None:
        super().__init__()
        self.name, self.aware, self.options = name, aware, options
        self.state: ThreePCState | None = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        model = trainer.strategy.model
        if not isinstance(model, DistributedDataParallel):
            raise RuntimeError(f"ThreePCCallback needs a DDP strategy (strategy='ddp'); the strategy "
                               f"{type(trainer.strategy).__name__} wraps the model in {type(model).__name__}")
        optimizers = list(trainer.optimizers)
        told = optimizers[0] if self.aware and len(optimizers) == 1 and isinstance(optimizers[0], AWARE) else None
        options = dict(self.options)
        if told is not None:
            try:
                adam_settings(told)
            except ValueError as e:  # e.g. Adam's coupled weight decay: the plain hook, as without the callback's help
                warnings.warn(f"ThreePCCallback registers the plain hook on raw gradients: {e}", stacklevel=2)
                told = None
        scaler = getattr(getattr(trainer.strategy, "precision_plugin", None), "scaler", None)
        if told is not None and scaler is not None:
            options.setdefault("scaler", scaler)  # 16-mixed: the moments in unscaled units
        self.state = register(model, self.name, optimizer=told, **options)
