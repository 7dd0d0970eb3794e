"""The 3PC paper's constants and Theorem 1 stepsize (Richtárik et al. 2022, "3PC")."""
from __future__ import annotations

import math

from ..mechanisms.ef14 import EF14
from ..mechanisms.lag import LAGWK
from ..core.mechanism import Mechanism


def constants(mechanism: Mechanism, numel: int, workers: int = 1) -> tuple[float, float]:
    """(A, B) with E||C_{h,y}(x) - x||^2 <= (1 - A)||h - y||^2 + B||x - y||^2 on R^numel (Def. 3.1)."""
    return mechanism.constants(numel, workers)


def stepsize(mechanism: Mechanism, numel: int, l_minus: float, l_plus: float, workers: int = 1) -> float:
    """Theorem 1: gamma = 1 / (L_- + L_+ sqrt(B/A)), with L_- the smoothness constant of f and
    L_+ = sqrt((1/n) sum_i L_i^2). For the mechanisms outside the 3PC family (EF14, LAG-WK) the
    harness starts from the GD stepsize 1/L_- and tunes a multiplier, as the papers do."""
    if isinstance(mechanism, (EF14, LAGWK)):
        return 1.0 / l_minus
    a, b = constants(mechanism, numel, workers)
    return 1.0 / (l_minus + l_plus * math.sqrt(b / a))
