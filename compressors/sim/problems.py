"""Finite-sum problems for the simulation harness: f(x) = (1/n) sum_i f_i(x), worker i holding a
contiguous block of rows (the remainder on the last worker), as in the EF21 and 3PC papers."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

PROBLEMS = ("logistic", "least_squares")
SPARSE_BELOW = 0.25  # store features in CSR when fewer than this fraction is nonzero (a9a: 11%)


def _matrix(dense: Tensor) -> Tensor:
    """``dense`` itself, or its CSR form when it is sparse enough for CSR products to be faster."""
    if dense.numel() and float((dense != 0).float().mean()) < SPARSE_BELOW:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            return dense.to_sparse_csr()
    return dense


def split_rows(rows: int, workers: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) blocks of rows // workers rows, the remainder on the last worker."""
    if not 1 <= workers <= rows:
        raise ValueError(f"cannot split {rows} rows over {workers} workers: need 1 <= workers <= rows")
    size = rows // workers
    return [(i * size, (i + 1) * size if i < workers - 1 else rows) for i in range(workers)]


@dataclass
class FiniteSum:
    """Worker i's loss on its rows (a_j, b_j), b_j in {-1, +1}, m_i rows:

    * logistic:       f_i(x) = (1/m_i) sum_j log(1 + exp(-b_j a_j^T x)) + lam sum_k x_k^2/(1 + x_k^2)
      (the nonconvex regulariser of the EF21/3PC experiments, lam = 0.1);
    * least_squares:  f_i(x) = (1/(2 m_i)) ||A_i x - b_i||^2 + the same regulariser (lam = 0 by default).

    Smoothness: L_i = lambda_max(A_i^T A_i) c / m_i + 2 lam with c = 1/4 (logistic) or 1
    (least squares); L_- is f's constant (the same bound on (1/n) sum_i A_i^T A_i c / m_i) and
    L_tilde = sqrt((1/n) sum_i L_i^2), the L_+ of Theorem 1.
    """

    features: Tensor  # (rows, d) float32
    labels: Tensor  # (rows,) float32 in {-1, +1}
    workers: int
    kind: str = "logistic"
    lam: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in PROBLEMS:
            raise ValueError(f"unknown problem {self.kind!r}; use one of {', '.join(PROBLEMS)}")
        self.blocks = split_rows(self.features.shape[0], self.workers)
        curvature = 0.25 if self.kind == "logistic" else 1.0
        grams = [self.features[a:b].double().T @ self.features[a:b].double() * (curvature / (b - a))
                 for a, b in self.blocks]
        self.l_i = [float(torch.linalg.eigvalsh(g)[-1]) + 2 * self.lam for g in grams]
        self.l_minus = float(torch.linalg.eigvalsh(sum(grams) / self.workers)[-1]) + 2 * self.lam
        self.l_tilde = math.sqrt(sum(v * v for v in self.l_i) / self.workers)
        self._rows = _matrix(self.features)
        self._blocks_t = [_matrix(self.features[a:b].T.contiguous()) for a, b in self.blocks]

    @classmethod
    def from_arrays(cls, x: np.ndarray, y: np.ndarray, workers: int, kind: str = "logistic",
                    lam: float = 0.1) -> FiniteSum:
        return cls(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                   torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)), workers, kind, lam)

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    def worker_grads(self, x: Tensor) -> Tensor:
        """(n, d) float32: row i is grad f_i(x)."""
        margins = self._rows @ x
        if self.kind == "logistic":
            # d/dz log(1 + exp(-b z)) = -b sigmoid(-b z)
            slopes = -self.labels * torch.sigmoid(-self.labels * margins)
        else:
            slopes = margins - self.labels
        regulariser = 2 * self.lam * x / (1 + x * x) ** 2
        return torch.stack([t @ slopes[a:b] / (b - a) for t, (a, b) in zip(self._blocks_t, self.blocks)]) + regulariser

    def loss(self, x: Tensor) -> float:
        margins = self.features @ x
        per_row = (torch.nn.functional.softplus(-self.labels * margins) if self.kind == "logistic"
                   else 0.5 * (margins - self.labels) ** 2)
        data = sum(float(per_row[a:b].mean()) for a, b in self.blocks) / self.workers
        return data + self.lam * float((x * x / (1 + x * x)).sum())
