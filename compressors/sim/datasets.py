"""Data for the experiments: a LIBSVM-format reader and the vendored a9a set."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

# LIBSVM's a9a (UCI Adult, binarised): 48,842 rows = the usual a9a (32,561) + a9a.t (16,281)
# files, 123 binary features. Vendored (package data) from the project's shared/data/a9a.gz; origin: the LIBSVM data
# sets (Chang & Lin), derived from the UCI Adult data set.
A9A = Path(__file__).resolve().parent / "data" / "a9a.gz"
A9A_TRAIN_ROWS = 32_561


def load_libsvm(path: str | Path, n_features: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Dense float32 features (rows x features) and labels in {-1, +1} of a LIBSVM file.

    Lines are ``label idx:value ...`` with 1-based indices; ``.gz`` files are read directly.
    Labels {-1, +1}, {0, 1} and {1, 2} are mapped to {-1, +1} (the larger one is +1).
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    labels, tokens, counts = [], [], []
    with opener(path, "rt") as f:
        for line in f:
            fields = line.replace(":", " ").split()
            if fields:
                labels.append(fields[0])
                tokens.extend(fields[1:])
                counts.append((len(fields) - 1) // 2)
    pairs = np.asarray(tokens, dtype=np.float64).reshape(-1, 2)
    rows = np.repeat(np.arange(len(labels)), counts)
    cols = pairs[:, 0].astype(np.int64) - 1
    vals = pairs[:, 1]
    n = len(labels)
    d = n_features if n_features is not None else int(cols.max(initial=-1)) + 1
    if cols.size and (cols.min() < 0 or cols.max() >= d):
        raise ValueError(f"{path}: feature indices must lie in [1, {d}], found [{cols.min() + 1}, {cols.max() + 1}]")
    x = np.zeros((n, d), dtype=np.float32)
    x[rows, cols] = vals
    y = np.asarray(labels, dtype=np.float64)
    classes = np.unique(y)
    if len(classes) > 2:
        raise ValueError(f"{path}: expected binary labels, found {classes[:5]}")
    return x, np.where(y == classes.max(), 1.0, -1.0).astype(np.float32) if len(classes) == 2 else np.ones(n, np.float32)
