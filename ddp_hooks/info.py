"""``python -m ddp_hooks.info``: what threepc runs with here (versions, kernel backend, hooks),
to paste into a bug report."""
from __future__ import annotations

import importlib.metadata
import platform

import torch

import compressors
import ddp_hooks
from compressors import kernels
from ddp_hooks.registry import ADAM_DEFAULT, CORRECTED, DEFAULT, SGD_DEFAULT, SGD_MOMENTUM_DEFAULT


def _installed(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def collect() -> dict[str, object]:
    """Versions, the kernel backend (and why, and the extension's build), the hook names and what
    ``register(ddp)`` registers."""
    kernel = kernels.backend_info()
    return {"threepc": compressors.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "numba": _installed("numba"), **{f"kernels.{key}": value for key, value in kernel.items()},
            "hooks": ", ".join(ddp_hooks.MECHANISMS),
            "register(ddp)": f"{DEFAULT} {_options(SGD_DEFAULT)}; a heavy-ball momentum SGD found or passed: "
                             f"{CORRECTED} {_options(SGD_MOMENTUM_DEFAULT)}; an Adam or AdamW found or passed: the "
                             f"Adam mode, {DEFAULT} {_options(ADAM_DEFAULT)}"}


def _options(options: dict[str, object]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in options.items())


def main() -> None:
    for key, value in collect().items():
        print(f"{key + ':':<26}{value}")


if __name__ == "__main__":
    main()
