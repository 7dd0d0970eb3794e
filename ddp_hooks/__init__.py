"""threepc's DDP communication hooks.

    >>> import ddp_hooks
    >>> state = ddp_hooks.register(ddp_model, "ef21", ratio=0.01)   # one line
    >>> # or, explicitly:
    >>> state = ddp_hooks.ThreePCState(EF21(TopK(ratio=0.01)), model=ddp_model)
    >>> ddp_model.register_comm_hook(state, ddp_hooks.threepc_hook)
"""
from compressors import __version__

from .hook import threepc_hook
from .registry import DEFAULT, MECHANISMS, mechanism, register
from .stale_gradients import StaleGradients
from .state import ThreePCError, ThreePCState
from .stats import CommStats

__all__ = ["__version__", "DEFAULT", "MECHANISMS", "CommStats", "StaleGradients", "ThreePCError", "ThreePCState",
           "mechanism", "register", "threepc_hook"]
