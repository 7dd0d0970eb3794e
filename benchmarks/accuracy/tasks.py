"""The suite's tasks: data (loaded once, in the launching process), model, minibatches, metric.

Each task is sized to train in well under a minute per rank on one CPU thread, and short
enough that dense allreduce is still improving at the end: a method that slows optimisation
shows up as a gap in the final metric instead of being hidden by saturation.
"""
from __future__ import annotations

import hashlib
import math
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

Data = dict[str, np.ndarray]


@dataclass(frozen=True)
class Task:
    """Base: subclasses define ``load``, ``model``, ``batch`` and ``evaluate``.

    ``lr`` maps an optimizer family ("sgd", "adamw") to its base learning rate; ``chance`` is
    the metric of a model that learned nothing (the test's "learns" threshold).
    """

    name: ClassVar[str]
    metric: ClassVar[str]
    higher_is_better: ClassVar[bool]
    steps: int
    eval_every: int
    batch_size: int  # per rank
    bucket_cap_mb: float  # small enough for several DDP buckets
    lr: tuple[tuple[str, float], ...]

    @property
    def chance(self) -> float:
        raise NotImplementedError

    def load(self) -> Data:
        raise NotImplementedError

    def model(self) -> nn.Module:
        raise NotImplementedError

    def batch(self, data: Data, rank: int, workers: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return nn.functional.cross_entropy(model(x), y)

    def evaluate(self, model: nn.Module, data: Data) -> float:
        raise NotImplementedError

    def base_lr(self, family: str) -> float:
        return dict(self.lr)[family]


def _shard_rows(n: int, rank: int, workers: int, gen: torch.Generator, size: int) -> Tensor:
    """``size`` random row indices of this rank's contiguous shard of ``n`` rows."""
    lo, hi = n * rank // workers, n * (rank + 1) // workers
    return torch.randint(lo, hi, (size,), generator=gen)


def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@dataclass(frozen=True)
class Rows(Task):
    """A classification task of x_train/y_train/x_test/y_test arrays: minibatches of rows of this
    rank's shard, test accuracy as the metric."""

    metric: ClassVar[str] = "test_accuracy"
    higher_is_better: ClassVar[bool] = True

    def batch(self, data: Data, rank: int, workers: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        rows = _shard_rows(len(data["y_train"]), rank, workers, gen, self.batch_size).numpy()
        return torch.from_numpy(data["x_train"][rows]), torch.from_numpy(data["y_train"][rows])

    def evaluate(self, model: nn.Module, data: Data) -> float:
        return _accuracy(model, torch.from_numpy(data["x_test"]), torch.from_numpy(data["y_test"]))


# --- (1) byte-level transformer LM on the standard library's own sources ---------------------

class ByteTransformer(nn.Module):
    """Pre-norm causal transformer over bytes (or ``vocab`` tokens) with learned positions; ``tied``:
    the read-out shares the embedding's weight (GPT-2's)."""

    def __init__(self, context: int, width: int, layers: int, heads: int, vocab: int = 256, tied: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.randn(context, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)
        if tied:
            self.head.weight = self.embed.weight
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        t = tokens.shape[1]
        h = self.embed(tokens) + self.position[:t]
        return self.head(self.norm(self.blocks(h, mask=self.mask[:t, :t], is_causal=True)))


@dataclass(frozen=True)
class StdlibLM(Task):
    """Next-byte prediction on ``*.py`` files of ``sysconfig.get_paths()["stdlib"]`` (not
    site-packages); a file goes to validation when the md5 of its relative path is 0 mod 10.
    Metric: validation cross-entropy in nats per byte (chance: ln 256 = 5.55)."""

    name: ClassVar[str] = "stdlib_lm"
    metric: ClassVar[str] = "val_loss"
    higher_is_better: ClassVar[bool] = False
    steps: int = 300
    eval_every: int = 30
    batch_size: int = 16
    bucket_cap_mb: float = 0.1
    lr: tuple[tuple[str, float], ...] = (("sgd", 0.1), ("adamw", 3e-3))
    context: int = 64
    width: int = 64
    layers: int = 2
    heads: int = 4
    train_bytes: int = 1_000_000
    val_bytes: int = 100_000
    val_windows: int = 128

    @property
    def chance(self) -> float:
        return math.log(256)

    def load(self) -> Data:
        return self._windows({s: np.frombuffer(text, dtype=np.uint8) for s, text in self._texts().items()})

    def _texts(self) -> dict[str, bytes]:
        """The train and validation text, up to ``train_bytes`` and ``val_bytes``."""
        root = Path(sysconfig.get_paths()["stdlib"])
        parts: dict[str, list[bytes]] = {"train": [], "val": []}
        caps, sizes = {"train": self.train_bytes, "val": self.val_bytes}, {"train": 0, "val": 0}
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel.startswith("site-packages/") or "/site-packages/" in rel:
                continue
            split = "val" if int(hashlib.md5(rel.encode()).hexdigest(), 16) % 10 == 0 else "train"
            if sizes[split] >= caps[split]:
                if all(sizes[s] >= caps[s] for s in caps):
                    break
                continue
            text = path.read_bytes()[:caps[split] - sizes[split]]
            parts[split].append(text)
            sizes[split] += len(text)
        return {s: b"".join(parts[s]) for s in ("train", "val")}

    def _windows(self, tokens: dict[str, np.ndarray]) -> Data:
        """The training tokens and ``val_windows`` evenly spaced validation windows."""
        train, val = tokens["train"], tokens["val"]
        starts = np.linspace(0, len(val) - self.context - 2, self.val_windows).astype(np.int64)
        return {"train": train, "val": np.stack([val[s:s + self.context + 1] for s in starts])}

    def model(self) -> nn.Module:
        return ByteTransformer(self.context, self.width, self.layers, self.heads)

    def batch(self, data: Data, rank: int, workers: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        text = data["train"]
        starts = _shard_rows(len(text) - self.context - 1, rank, workers, gen, self.batch_size)
        windows = torch.from_numpy(np.stack([text[s:s + self.context + 1] for s in starts.tolist()]).astype(np.int64))
        return windows[:, :-1], windows[:, 1:]

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        logits = model(x)
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def evaluate(self, model: nn.Module, data: Data) -> float:
        windows = torch.from_numpy(data["val"].astype(np.int64))
        with torch.no_grad():
            return self.loss(model, windows[:, :-1], windows[:, 1:]).item()


@dataclass(frozen=True)
class StdlibWords(StdlibLM):
    """``stdlib_lm``'s text as words (runs of word characters, or one other non-space byte), the
    ``vocab`` - 1 most frequent training words and one unknown, by a transformer whose read-out is
    tied to its embedding (GPT-2's): the embedding holds most of the parameters, and a step's
    batch touches a few hundred of its rows. Metric: validation cross-entropy in nats per word
    (chance: ln vocab)."""

    name: ClassVar[str] = "stdlib_words"
    lr: tuple[tuple[str, float], ...] = (("sgd", 0.1), ("adamw", 3e-3))
    vocab: int = 4096

    @property
    def chance(self) -> float:
        return math.log(self.vocab)

    def load(self) -> Data:
        words = {s: re.findall(rb"\w+|[^\w\s]", text) for s, text in self._texts().items()}
        counts: dict[bytes, int] = {}
        for w in words["train"]:
            counts[w] = counts.get(w, 0) + 1
        kept = sorted(counts, key=lambda w: (-counts[w], w))[:self.vocab - 1]
        ids = {w: i + 1 for i, w in enumerate(kept)}  # 0: unknown
        return self._windows({s: np.array([ids.get(w, 0) for w in ws], dtype=np.int64) for s, ws in words.items()})

    def model(self) -> nn.Module:
        return ByteTransformer(self.context, self.width, self.layers, self.heads, self.vocab, tied=True)


# --- (2) small CNN on scikit-learn's bundled 8x8 digits ---------------------------------------

class DigitsCNN(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * c * 16, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def random_shift(images: Tensor, gen: torch.Generator, pixels: int = 1) -> Tensor:
    """Each image of (B, 1, H, W) translated by a random offset in [-pixels, pixels]^2, zero-filled."""
    b, _, h, w = images.shape
    padded = nn.functional.pad(images, (pixels,) * 4)
    dy, dx = (torch.randint(0, 2 * pixels + 1, (b,), generator=gen) for _ in range(2))
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    return padded[torch.arange(b)[:, None, None], 0, rows, cols][:, None]


@dataclass(frozen=True)
class Digits(Rows):
    """sklearn's digits (1,797 images, 8x8): a fixed 1,297 / 500 train/test split, random
    1-pixel shifts as augmentation. Metric: test accuracy (chance: 0.1)."""

    name: ClassVar[str] = "digits_cnn"
    steps: int = 600
    eval_every: int = 60
    batch_size: int = 16
    bucket_cap_mb: float = 0.03
    lr: tuple[tuple[str, float], ...] = (("sgd", 0.05), ("adamw", 2e-3))
    channels: int = 16
    test_rows: int = 500

    @property
    def chance(self) -> float:
        return 0.1

    def load(self) -> Data:
        from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

        digits = load_digits()
        order = np.random.default_rng(0).permutation(len(digits.target))
        x = (digits.images[order] / 16.0).astype(np.float32)[:, None]
        y = digits.target[order].astype(np.int64)
        t = len(y) - self.test_rows
        return {"x_train": x[:t], "y_train": y[:t], "x_test": x[t:], "y_test": y[t:]}

    def model(self) -> nn.Module:
        return DigitsCNN(self.channels)

    def batch(self, data: Data, rank: int, workers: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        rows = _shard_rows(len(data["y_train"]), rank, workers, gen, self.batch_size).numpy()
        x = random_shift(torch.from_numpy(data["x_train"][rows]), gen)
        return x, torch.from_numpy(data["y_train"][rows])


# --- (3) the demo's a9a MLP, for continuity with the README's table ---------------------------

@dataclass(frozen=True)
class A9A(Rows):
    """The demo's MLP (123 -> 64 -> 64 -> 2) on a9a. Metric: test accuracy (chance: the
    majority class, 0.76); saturates near 0.85, kept for continuity with the README."""

    name: ClassVar[str] = "a9a_mlp"
    steps: int = 300
    eval_every: int = 30
    batch_size: int = 64
    bucket_cap_mb: float = 0.01
    lr: tuple[tuple[str, float], ...] = (("sgd", 0.01), ("adamw", 1e-3))
    hidden: int = 64

    @property
    def chance(self) -> float:
        return 0.7638  # share of the majority class (<=50K) in a9a's test rows

    def load(self) -> Data:
        from compressors.sim.datasets import A9A as A9A_FILE, A9A_TRAIN_ROWS, load_libsvm

        x, y = load_libsvm(A9A_FILE, n_features=123)
        y = (y > 0).astype(np.int64)
        return {"x_train": x[:A9A_TRAIN_ROWS], "y_train": y[:A9A_TRAIN_ROWS],
                "x_test": x[A9A_TRAIN_ROWS:], "y_test": y[A9A_TRAIN_ROWS:]}

    def model(self) -> nn.Module:
        h = self.hidden
        return nn.Sequential(nn.Linear(123, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 2))


# --- held out: tasks no default was chosen on (run with --tasks; not in the default suite) -----

class ByteGRU(nn.Module):
    """Embedding, one GRU layer, a linear read-out: a recurrent LM (two large recurrent matrices)."""

    def __init__(self, embed: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, embed)
        self.rnn = nn.GRU(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 256)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.rnn(self.embed(tokens))[0])


@dataclass(frozen=True)
class StdlibGRU(StdlibLM):
    """``stdlib_lm``'s text and metric with a recurrent model instead of the transformer."""

    name: ClassVar[str] = "stdlib_gru"
    lr: tuple[tuple[str, float], ...] = (("sgd", 0.5), ("adamw", 3e-3))
    embed: int = 64
    hidden: int = 192

    def model(self) -> nn.Module:
        return ByteGRU(self.embed, self.hidden)


class TeacherStudent(nn.Module):
    """A student MLP with BatchNorm (DDP broadcasts its running statistics from rank 0)."""

    def __init__(self, features: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


@dataclass(frozen=True)
class Teacher(Rows):
    """Synthetic data every machine can make: x ~ N(0, I_32), the label the argmax of a fixed
    random teacher (32 -> 64 tanh -> 10, weights from seed 1234), 5% of the training labels
    replaced by random ones; a BatchNorm student. Metric: test accuracy (chance: the majority
    class, 0.18)."""

    name: ClassVar[str] = "teacher_bn"
    steps: int = 400
    eval_every: int = 40
    batch_size: int = 32
    bucket_cap_mb: float = 0.02
    lr: tuple[tuple[str, float], ...] = (("sgd", 0.05), ("adamw", 2e-3))
    features: int = 32
    hidden: int = 128
    train_rows: int = 20_000
    test_rows: int = 5_000

    @property
    def chance(self) -> float:
        return 0.1828  # share of the majority class in the test rows

    def load(self) -> Data:
        rng = np.random.default_rng(1234)
        w1 = rng.standard_normal((self.features, 64)) / math.sqrt(self.features)
        w2 = rng.standard_normal((64, 10)) / math.sqrt(64)
        x = rng.standard_normal((self.train_rows + self.test_rows, self.features)).astype(np.float32)
        y = (np.tanh(2.0 * x @ w1) @ w2).argmax(1).astype(np.int64)
        noisy = rng.random(self.train_rows) < 0.05
        y[:self.train_rows][noisy] = rng.integers(0, 10, int(noisy.sum()))
        t = self.train_rows
        return {"x_train": x[:t], "y_train": y[:t], "x_test": x[t:], "y_test": y[t:]}

    def model(self) -> nn.Module:
        return TeacherStudent(self.features, self.hidden, 10)


class HashedNgrams(nn.Module):
    """fastText's classifier (Joulin et al. 2017): the mean of hashed n-gram embeddings, then a
    linear layer. Each step touches the rows of the batch's n-grams only (most rows' gradient is 0)."""

    def __init__(self, buckets: int, dim: int, classes: int) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(buckets, dim, mode="mean")
        self.head = nn.Linear(dim, classes)

    def forward(self, grams: Tensor) -> Tensor:
        return self.head(self.embed(grams))


@dataclass(frozen=True)
class StdlibPackages(Rows):
    """Which standard-library package a 256-byte piece of source comes from: the ``classes``
    top-level packages of ``sysconfig.get_paths()["stdlib"]`` with the most bytes (``test``
    excluded), a file to the test split when the md5 of its relative path is 0 mod 5; each piece's
    byte trigrams hashed (md5-free: a fixed polynomial) into ``buckets`` rows. The classes are
    the Python's own, so a run is comparable on one Python version. Metric: test accuracy
    (chance: 1 / ``classes``; the test split's largest class is about 0.13 of it on Python 3.11)."""

    name: ClassVar[str] = "stdlib_ngrams"
    steps: int = 300
    eval_every: int = 30
    batch_size: int = 32
    bucket_cap_mb: float = 1.0
    lr: tuple[tuple[str, float], ...] = (("sgd", 1.0), ("adamw", 1e-2))
    classes: int = 8
    piece: int = 256
    buckets: int = 1 << 16
    dim: int = 32
    per_class: int = 1500  # training pieces per class at most (a fifth of it for the test split)

    @property
    def chance(self) -> float:
        return 1.0 / self.classes  # the classes are balanced up to per_class

    def load(self) -> Data:
        root = Path(sysconfig.get_paths()["stdlib"])
        files: dict[str, list[Path]] = {}
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).parts
            if len(parts) > 1 and parts[0] not in ("test", "site-packages"):
                files.setdefault(parts[0], []).append(path)
        files = {pkg: paths for pkg, paths in files.items() if len(paths) >= 10}  # pydoc_data: 2 huge files
        size = {pkg: sum(p.stat().st_size for p in paths) for pkg, paths in files.items()}
        chosen = sorted(sorted(size, key=lambda pkg: (-size[pkg], pkg))[:self.classes])
        rng = np.random.default_rng(0)
        out: dict[str, list[np.ndarray]] = {"x_train": [], "y_train": [], "x_test": [], "y_test": []}
        for label, pkg in enumerate(chosen):
            pieces: dict[str, list[np.ndarray]] = {"train": [], "test": []}
            for path in files[pkg]:
                rel = path.relative_to(root).as_posix()
                split = "test" if int(hashlib.md5(rel.encode()).hexdigest(), 16) % 5 == 0 else "train"
                text = np.frombuffer(path.read_bytes(), dtype=np.uint8)
                pieces[split] += [text[s:s + self.piece] for s in range(0, len(text) - self.piece + 1, self.piece)]
            for split, cap in (("train", self.per_class), ("test", self.per_class // 5)):
                kept = rng.permutation(len(pieces[split]))[:cap]
                out[f"x_{split}"] += [self._grams(pieces[split][i]) for i in sorted(kept)]
                out[f"y_{split}"] += [np.full(len(kept), label)]
        data = {k: np.concatenate(v).astype(np.int64) if k[0] == "y" else np.stack(v) for k, v in out.items()}
        order = rng.permutation(len(data["y_train"]))  # ranks shard contiguous rows: mix the classes first
        return {**data, "x_train": data["x_train"][order], "y_train": data["y_train"][order]}

    def _grams(self, piece: np.ndarray) -> np.ndarray:
        b = piece.astype(np.int64)
        return (b[:-2] * 65_599 * 65_599 + b[1:-1] * 65_599 + b[2:]) % self.buckets

    def model(self) -> nn.Module:
        return HashedNgrams(self.buckets, self.dim, self.classes)


class TwoTower(nn.Module):
    """A user and an item embedding, concatenated, through an MLP to two logits (a click model:
    nearly every parameter is an embedding row, and a step touches the batch's rows only)."""

    def __init__(self, users: int, items: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.users, self.items = nn.Embedding(users, dim), nn.Embedding(items, dim)
        self.head = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, pairs: Tensor) -> Tensor:
        return self.head(torch.cat([self.users(pairs[:, 0]), self.items(pairs[:, 1])], 1))


@dataclass(frozen=True)
class Clicks(Rows):
    """Synthetic clicks every machine can make: user u clicks item i when a_u . b_i + c_i + noise
    > 0, with a_u, b_i ~ N(0, I_8 / 8) and c_i ~ N(0, 0.5^2) from seed 4321 and logistic noise
    (scale 0.3); a two-tower student. Items are drawn with Zipf-like popularity (weight 1 / (rank +
    10)), so most item rows get no gradient in a step. Metric: test accuracy (chance: about 0.5)."""

    name: ClassVar[str] = "clicks"
    steps: int = 400
    eval_every: int = 40
    batch_size: int = 64
    bucket_cap_mb: float = 0.25
    lr: tuple[tuple[str, float], ...] = (("sgd", 0.5), ("adamw", 1e-2))
    users: int = 2000
    items: int = 4000
    dim: int = 32
    hidden: int = 64
    train_rows: int = 60_000
    test_rows: int = 10_000

    @property
    def chance(self) -> float:
        return 0.5

    def load(self) -> Data:
        rng = np.random.default_rng(4321)
        a = rng.standard_normal((self.users, 8)) / math.sqrt(8)
        b = rng.standard_normal((self.items, 8)) / math.sqrt(8)
        c = 0.5 * rng.standard_normal(self.items)
        rows = self.train_rows + self.test_rows
        popularity = 1.0 / (np.arange(self.items) + 10.0)
        u = rng.integers(0, self.users, rows)
        i = rng.choice(self.items, rows, p=popularity / popularity.sum())
        y = ((a[u] * b[i]).sum(1) + c[i] + rng.logistic(0.0, 0.3, rows) > 0).astype(np.int64)
        x = np.stack([u, i], 1).astype(np.int64)
        t = self.train_rows
        return {"x_train": x[:t], "y_train": y[:t], "x_test": x[t:], "y_test": y[t:]}

    def model(self) -> nn.Module:
        return TwoTower(self.users, self.items, self.dim, self.hidden)


@dataclass(frozen=True)
class Regression(Rows):
    """Least squares on isotropic features, a convex task without sparse structure: x ~ N(0,
    I_100), y = <w, x> + 0.3 + 0.1 noise with w ~ N(0, I/100) (seed 4321), a linear model on
    minibatches of this rank's shard. Every entry of the gradient carries signal, so Top-K's error
    feedback delays all of them alike: the step size the task is stable at shrinks under
    compression (the SGD rate, 0.02, is about 0.7 of the one at which allreduce itself diverges at
    2 ranks, measured with ``--recipes 'sgdm*1.5'``; ``accuracy_regression.md``).
    Metric: test mean squared error (chance: the variance of the test labels, 0.90)."""

    name: ClassVar[str] = "regression"
    metric: ClassVar[str] = "test_mse"
    higher_is_better: ClassVar[bool] = False
    steps: int = 300
    eval_every: int = 30
    batch_size: int = 16
    bucket_cap_mb: float = 25.0
    lr: tuple[tuple[str, float], ...] = (("sgd", 0.02), ("adamw", 1e-2))
    features: int = 100
    train_rows: int = 20_000
    test_rows: int = 5_000

    @property
    def chance(self) -> float:
        return 0.90  # the test labels' variance: the error of predicting their mean

    def load(self) -> Data:
        rng = np.random.default_rng(4321)
        w = rng.standard_normal(self.features) / math.sqrt(self.features)
        x = rng.standard_normal((self.train_rows + self.test_rows, self.features)).astype(np.float32)
        y = (x @ w + 0.3 + 0.1 * rng.standard_normal(len(x))).astype(np.float32)
        t = self.train_rows
        return {"x_train": x[:t], "y_train": y[:t], "x_test": x[t:], "y_test": y[t:]}

    def model(self) -> nn.Module:
        return nn.Linear(self.features, 1)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return nn.functional.mse_loss(model(x).squeeze(-1), y)

    def evaluate(self, model: nn.Module, data: Data) -> float:
        with torch.no_grad():
            return self.loss(model, torch.from_numpy(data["x_test"]), torch.from_numpy(data["y_test"])).item()


SUITE = ("stdlib_lm", "digits_cnn", "a9a_mlp")  # what the defaults were chosen on (the default --tasks)
TASKS: dict[str, Task] = {t.name: t for t in (StdlibLM(), Digits(), A9A(), StdlibGRU(), Teacher(), StdlibPackages(),
                                               Clicks(), StdlibWords(), Regression())}
# --quick: about a minute for allreduce and the default hook on all three tasks at 2 ranks; a9a
# keeps its full length (2 s a run), so the default's gap there is the full run's
QUICK: dict[str, dict[str, object]] = {
    "stdlib_lm": dict(steps=60, eval_every=20, train_bytes=200_000, val_bytes=20_000, val_windows=32),
    "digits_cnn": dict(steps=150, eval_every=50),
    "a9a_mlp": {},
    "stdlib_gru": dict(steps=60, eval_every=20, train_bytes=200_000, val_bytes=20_000, val_windows=32),
    "stdlib_words": dict(steps=60, eval_every=20, train_bytes=200_000, val_bytes=20_000, val_windows=32),
}
