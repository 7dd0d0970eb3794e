"""Tests run from the repository root: make `benchmarks` importable as a package."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same global torch RNG state (tests must not be flaky)."""
    torch.manual_seed(0)
