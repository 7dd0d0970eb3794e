"""Tests run from the repository root: make `benchmarks` importable as a package."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
