"""Shared test setup (tests import the library only, never benchmarks/)."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same global torch RNG state (tests must not be flaky)."""
    torch.manual_seed(0)
