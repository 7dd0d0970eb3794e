"""PyTorch Lightning: a callback that registers a threepc hook on the strategy's DDP model when
fitting starts.

    >>> trainer = lightning.pytorch.Trainer(strategy="ddp", callbacks=[ThreePCCallback("ef21", ratio=0.01)])

Do not pass the hook to ``DDPStrategy(ddp_comm_hook=...)``: Lightning registers that hook only
on CUDA and drops it silently on CPU. This module imports without Lightning installed; the
callback then raises ImportError when built.
"""
from __future__ import annotations

from typing import Any

from torch.nn.parallel import DistributedDataParallel

from .registry import DEFAULT, register
from .state import ThreePCState

try:
    from lightning.pytorch import Callback
except ImportError:
    class Callback:  # type: ignore[no-redef]  # stands in so that this module imports
        def __init__(self) -> None:
            raise ImportError("ddp_hooks.lightning.ThreePCCallback needs PyTorch Lightning: pip install lightning")


class ThreePCCallback(Callback):
    """Registers ``ddp_hooks.register(ddp, name, **options)`` at fit start; the hook's state
    (byte counts in ``state.stats``, per-rank ``state_dict()``) is then ``self.state``.

    Lightning's checkpoints are written by rank 0 only, so they hold no hook state: a resumed
    fit starts the hook afresh (one dense warm-up round). Save ``state.state_dict()`` per rank
    yourself to carry it over.
    """

    def __init__(self, name: str = DEFAULT, **options: object) -> None:
        super().__init__()
        self.name = name
        self.options = options
        self.state: ThreePCState | None = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        model = trainer.strategy.model
        if not isinstance(model, DistributedDataParallel):
            raise RuntimeError(f"ThreePCCallback needs a DDP strategy (strategy='ddp'); the strategy "
                               f"{type(trainer.strategy).__name__} wraps the model in {type(model).__name__}")
        self.state = register(model, self.name, **self.options)
