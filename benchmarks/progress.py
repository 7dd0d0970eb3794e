"""Progress lines for the long-running CLIs: how far, how long, and an ETA."""
from __future__ import annotations

import sys
import time


def eta_line(done: int, total: int, started: float) -> str:
    """``[done/total] elapsed M min, ETA M min`` from ``started`` (``time.time()``), at a
    constant rate."""
    elapsed = time.time() - started
    eta = elapsed / done * (total - done) if done else float("nan")
    return f"[{done}/{total}] elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min"


def report(done: int, total: int, started: float, what: str) -> None:
    """Print one progress line to stderr (stdout keeps the results)."""
    print(f"{eta_line(done, total, started)}: {what}", file=sys.stderr, flush=True)
