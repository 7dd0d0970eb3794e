"""``python -m ddp_hooks.info``: what threepc runs with here (versions, kernel backend, hooks),
to paste into a bug report."""
from __future__ import annotations

import importlib.metadata
import platform

import torch

import compressors
import ddp_hooks
from compressors import kernels


def _installed(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def collect() -> dict[str, object]:
    """Versions, the kernel backend (and why, and the extension's build) and the hook names."""
    backend_info = getattr(kernels, "backend_info", None)  # absent in builds before it existed
    kernel = backend_info() if backend_info else {"backend": kernels.get_backend(),
                                                  "available": ", ".join(kernels.available_backends())}
    return {"threepc": compressors.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "numba": _installed("numba"), **{f"kernels.{key}": value for key, value in kernel.items()},
            "hooks": ", ".join(ddp_hooks.MECHANISMS)}


def main() -> None:
    for key, value in collect().items():
        print(f"{key + ':':<26}{value}")


if __name__ == "__main__":
    main()
