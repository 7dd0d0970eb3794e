"""Finds the compiled extension ``compressors._C`` and loads it only where it can work.

setup.py writes ``_C_build.json`` next to the library: the torch version it was built against
and whether with CUDA. A library built against another torch would fail with undefined symbols
(or worse), so the version is compared before the library is loaded.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path
from typing import TypedDict

import torch

MODULE = "compressors._C"
BUILD_INFO = "_C_build.json"
REBUILD = "build it with `pip install --no-build-isolation .` (or `python setup.py build_ext --inplace`)"


class BuildInfo(TypedDict):
    torch: str  # torch.__version__ at build time
    cuda: bool  # built with the CUDA kernels


def build_info(module: str = MODULE) -> BuildInfo | None:
    """What setup.py recorded next to the library; None without a library or a readable record."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    try:
        return json.loads(Path(spec.origin).with_name(BUILD_INFO).read_text())
    except (OSError, ValueError):
        return None


def load(module: str = MODULE) -> str | None:
    """Load the library (its static initialisers register the C++ kernels): None if it loaded,
    else why not, with the fix."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return f"{module} is not built; {REBUILD}"
    info = build_info(module)
    if info is None:
        return f"{module} ({spec.origin}) has no readable {BUILD_INFO}, so its torch version is unknown; re{REBUILD}"
    if info["torch"] != torch.__version__:
        return (f"{module} was built against torch {info['torch']} but torch {torch.__version__} is running; "
                f"re{REBUILD}")
    try:
        importlib.import_module(module)
    except (ImportError, OSError) as error:
        return f"{module} failed to load: {type(error).__name__}: {error}; re{REBUILD}"
    return None
