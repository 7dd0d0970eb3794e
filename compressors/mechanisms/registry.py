"""The one registry: mechanism name -> factory, with every option's type, default, valid range
and help. ``ddp_hooks.register``, the CLIs' ``--help`` and choices, the parity tests and the
benchmark tables all read it.

    >>> from compressors.mechanisms.registry import build
    >>> build("ef21", ratio=0.01)
    EF21(TopK(ratio=0.01))
"""
from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ..core.compressor import Compressor
from ..core.mechanism import Mechanism
from ..core.two_stage import TwoStage
from ..operators.packed_topk import PackedTopK
from ..operators.permk import PermK
from ..operators.randk import RandK
from ..operators.shared_topk import SharedTopK
from ..operators.sign import ScaledSign
from ..operators.sparse import Sparsifier
from ..operators.topk import TopK
from .clag import CLAG
from .co3 import CO3
from .co3_2s import CO3TwoStage
from .ef14 import EF14
from .ef14_momentum import MomentumCorrectedEF14
from .ef21 import EF21
from .ef21_plus import EF21Plus
from .ef21_sgdm import EF21SGDM
from .gd import GD
from .lag import LAG, LAGWK
from .marina import MARINA
from .sasg import SASG
from .threepc_v1 import ThreePCv1
from .threepc_v2 import ThreePCv2
from .threepc_v4 import ThreePCv4
from .threepc_v5 import ThreePCv5


@dataclass(frozen=True)
class Option:
    """One option of a registry entry: ``kind`` is int, float, str or bool; numbers must lie in
    [low, high] (``open_low``: low excluded); strings in ``choices`` when given; ``default``
    None means "derived from another option" (the help says from which)."""

    name: str
    kind: type
    default: object
    help: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    choices: tuple[str, ...] = ()

    def valid(self) -> str:
        """The valid values, as the error messages and ``--help`` print them."""
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind in (int, float) and (self.low is not None or self.high is not None):
            lo = "-inf" if self.low is None else f"{self.low:g}"
            hi = "inf" if self.high is None else f"{self.high:g}"
            return f"{self.kind.__name__} in {'(' if self.open_low else '['}{lo}, {hi}{']' if self.high is not None else ')'}"
        return self.kind.__name__

    def check(self, entry: str, value: object) -> object:
        """``value`` converted to ``kind``, or a ValueError naming the option and its valid values."""
        def bad() -> ValueError:
            return ValueError(f"{entry}: option {self.name}={value!r} ({type(value).__name__}) is invalid; "
                              f"{self.name} must be {self.valid()}: {self.help}")
        if value is None and self.default is None:
            return None
        if self.kind is bool:
            if not isinstance(value, bool):
                raise bad()
            return value
        if self.kind is str:
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                raise bad()
            return value
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or (self.kind is int and
                                                                               not isinstance(value, numbers.Integral)):
            raise bad()  # numpy's numbers pass (np.int64 is Integral, np.float64 Real)
        number = self.kind(value)
        if (self.kind is float and not math.isfinite(number)) or \
                (self.low is not None and (number <= self.low if self.open_low else number < self.low)) or \
                (self.high is not None and number > self.high):
            raise bad()
        return number


@dataclass(frozen=True)
class Entry:
    """A registered mechanism: ``build(options)`` from the checked options; ``ddp``: whether it
    runs as a DDP hook (3PCv1 needs side information DDP never sends)."""

    name: str
    help: str
    options: tuple[Option, ...]
    build: Callable[[dict[str, object]], Mechanism]
    ddp: bool = True

    def __call__(self, **options: object) -> Mechanism:
        known = {o.name: o for o in self.options}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"{self.name} does not take option(s) {unknown}{_did_you_mean(unknown, known)}; its "
                             f"options: {', '.join(known) or 'none'}")
        for ratio, k in SIZE_PAIRS:
            if options.get(ratio) is not None and options.get(k) is not None:
                raise ValueError(f"{self.name}: give {ratio}= (fraction kept) or {k}= (entries kept), not both")
        if options.get("compressor") in UNSIZED and {"ratio", "k"} & options.keys():
            raise ValueError(f"{self.name}: compressor={options['compressor']!r} sends a sign per entry and takes "
                             "no ratio= or k=; drop them (ef14's fraction= sends a share of the signs), or choose a "
                             "sparsifier (compressor='topk')")
        checked = {name: o.check(self.name, options.get(name, o.default)) for name, o in known.items()}
        return self.build(checked)


SIZE_PAIRS = (("ratio", "k"), ("q_ratio", "q_k"), ("ratio2", "k2"))
UNSIZED = ("sign",)  # compressor choices that keep every entry: ratio= and k= do not apply


# -- shared options and compressor slots --------------------------------------------------------
RATIO = Option("ratio", float, 0.01, "fraction of a bucket's entries the compressor keeps (unless k is given)",
               low=0.0, high=1.0, open_low=True)
K = Option("k", int, None, "entries kept per bucket, instead of ratio", low=1)
SEED = Option("seed", int, 0, "seed of random supports and coins (the same on every rank)", low=0)
SIZE = (RATIO, K)
FRACTION = Option("fraction", float, 1.0, "compressor='sign' only: the share of each bucket's entries whose signs a "
                  "round sends, a cyclic window (fraction bits per entry; error feedback holds the rest)",
                  low=0.5, high=1.0)


def compressor_option(name: str, default: str, choices: tuple[str, ...], help: str) -> Option:
    return Option(name, str, default, help, choices=choices)


CONTRACTIVE = compressor_option("compressor", "topk", ("topk", "topk8", "randk", "randk_shared", "shared_topk", "sign"),
                                "the contractive compressor C: Top-K; Top-K in about 16 bits per entry (8-bit float "
                                "values, indices relative to blocks of 255); unscaled Rand-K with private or shared support; "
                                "SharedTopK (one support for all ranks, proposed by a cyclic leader's Top-K one round "
                                "ahead, plus shared random entries: values travel by one allreduce); scaled sign (one "
                                "bit per entry and a bf16 scale per 2048 entries; takes no ratio or k; for the Adam "
                                "mode, optimizer=adamw: under SGD with momentum it diverged in the accuracy suite)")
# a composed payload (3PCv2, 3PCv4) carries C's parts under a prefix, where no leader's proposal is read
COMPOSED = compressor_option("compressor", "topk", ("topk", "randk", "randk_shared"),
                             "the contractive compressor C: Top-K; unscaled Rand-K with private or shared support")
UNBIASED = ("randk", "randk_shared", "permk")


def _sized(cls: type[Sparsifier], ratio: float | None, k: int | None, **kwargs: object) -> Sparsifier:
    return cls(k=k, **kwargs) if k is not None else cls(ratio if ratio is not None else RATIO.default, **kwargs)


def contractive(o: Mapping[str, object]) -> Compressor:
    """C from the entry's ``compressor``, ``ratio``/``k``, ``fraction`` and ``seed`` options."""
    if o.get("fraction", 1.0) != 1.0 and o.get("compressor") != "sign":
        raise ValueError(f"fraction={o['fraction']} is the share of entries a round's signs cover: it needs "
                         f"compressor='sign', got compressor={o.get('compressor')!r}; drop fraction= or use signs")
    if o.get("compressor", "topk") == "topk":
        return _sized(TopK, o["ratio"], o["k"])
    if o["compressor"] == "topk8":
        return _sized(PackedTopK, o["ratio"], o["k"])
    if o["compressor"] == "sign":
        return ScaledSign(fraction=o.get("fraction", 1.0))
    if o["compressor"] == "shared_topk":
        return _sized(SharedTopK, o["ratio"], o["k"], seed=o["seed"])
    return _sized(RandK, o["ratio"], o["k"], scaled=False, shared=o["compressor"] == "randk_shared", seed=o["seed"])


def unbiased(kind: str, ratio: float | None, k: int | None, seed: int) -> Compressor:
    """Q: scaled Rand-K (private or shared support) or Perm-K."""
    if kind == "permk":
        return PermK(seed=seed)
    return _sized(RandK, ratio, k, shared=kind == "randk_shared", seed=seed)


def second_size(o: Mapping[str, object], ratio: str, k: str) -> tuple[float | None, int | None]:
    """A second compressor's (ratio, k): its own options if given, else C's."""
    return (o[ratio], o[k]) if o[ratio] is not None or o[k] is not None else (o["ratio"], o["k"])


def _entry(name: str, help: str, build: Callable[[dict[str, object]], Mechanism], *options: Option,
           ddp: bool = True) -> Entry:
    return Entry(name, help, options, build, ddp)


ZETA = Option("zeta", float, 1.0, "trigger threshold: upload when ||x - h||^2 > zeta ||x - y||^2", low=0.0)
P = Option("p", float, 0.1, "probability of a dense round (a coin shared by all ranks)", low=0.0, high=1.0,
           open_low=True)
WINDOW = Option("window", int, 10, "D, how many past aggregate moves the trigger reads", low=1)

CO3_OPTIONS = (
    Option("fmt", str, "fp8-152", "float format fpB-SEM[-bBIAS], e.g. fp8-152, fp8-143, fp4-121"),
    Option("gamma", float, 0.7, "memory decay: v = grad + gamma e", low=0.0, high=1.0, open_low=True),
    Option("coder", str, "huffman", "lossless coder of the float codes: Huffman or rANS of the GenNorm model, "
           "Huffman or rANS of the histogram, or none",
           choices=("huffman", "rans", "empirical", "rans_empirical", "none")),
    Option("scale", str, "gennorm", "how the scale is chosen", choices=("gennorm", "max")),
    Option("rounding", str, "nearest", "rounding to the float format", choices=("nearest", "stochastic")),
    SEED)

REGISTRY: dict[str, Entry] = {e.name: e for e in (
    _entry("gd", "no compression: one fp32 allreduce per bucket (DDP's default, through the hook)", lambda o: GD()),
    _entry("ef14", "classic error feedback (Seide et al. 2014): send C(e + grad), keep the rest",
           lambda o: EF14(contractive(o)), *SIZE, CONTRACTIVE, FRACTION, SEED),
    _entry("ef14_mc", "EF14 with momentum correction (DGC, Lin et al. 2018) for SGD with momentum: error feedback "
           "on each rank's momentum, .grad = a - momentum * a_prev, so the user's SGD applies the corrected step",
           lambda o: MomentumCorrectedEF14(contractive(o), o["momentum"], o["kept"]), *SIZE,
           compressor_option("compressor", "topk", ("topk", "topk8", "randk", "randk_shared"),
                             "the sparsifier C: Top-K; Top-K in about 16 bits per entry; unscaled Rand-K with private "
                             "or shared support"), SEED,
           Option("momentum", float, 0.9, "the optimizer's momentum beta (register(ddp, optimizer=sgd) reads it "
                  "from the optimizer every round)", low=0.0, high=1.0),
           Option("kept", float, 0.9, "the share of a rank's momentum kept at the entries it sent (DGC's "
                  "momentum-factor masking is 0)", low=0.0, high=1.0)),
    _entry("ef21", "EF21 (Richtarik et al. 2021): g_i += C(grad - g_i)", lambda o: EF21(contractive(o)),
           *SIZE, CONTRACTIVE, SEED),
    _entry("ef21plus", "EF21+: the better of C(grad) and g_i + C(grad - g_i) (deterministic C)",
           lambda o: EF21Plus(contractive(o)), *SIZE,
           compressor_option("compressor", "topk", ("topk",), "the deterministic compressor C")),
    _entry("ef21_sgdm", "EF21-SGDM (Fatkhullin et al. 2023): EF21 on a momentum v_i",
           lambda o: EF21SGDM(contractive(o), eta=o["eta"]), *SIZE, CONTRACTIVE, SEED,
           Option("eta", float, 0.1, "momentum weight of the new gradient: v = (1 - eta) v + eta grad",
                  low=0.0, high=1.0, open_low=True)),
    _entry("3pcv1", "3PCv1: y + C(x - y) (needs the exact previous gradient at the server: simulation only)",
           lambda o: ThreePCv1(contractive(o)), *SIZE, CONTRACTIVE, SEED, ddp=False),
    _entry("3pcv2", "3PCv2: b = h + Q(x - y), then b + C(x - b)",
           lambda o: ThreePCv2(contractive(o), unbiased(o["q"], *second_size(o, "q_ratio", "q_k"), o["seed"])),
           *SIZE, COMPOSED, SEED,
           compressor_option("q", "randk", ("randk", "randk_shared"), "the unbiased compressor Q"),
           Option("q_ratio", float, None, "Q's ratio (default: C's size)", low=0.0, high=1.0, open_low=True),
           Option("q_k", int, None, "Q's entries kept (default: C's size)", low=1)),
    _entry("3pcv4", "3PCv4: b = h + C2(x - h), then b + C1(x - b)",
           lambda o: ThreePCv4(contractive(o), _sized(TopK, *second_size(o, "ratio2", "k2"))),
           *SIZE, COMPOSED, SEED,
           Option("ratio2", float, None, "C2's (Top-K) ratio (default: C's size)", low=0.0, high=1.0, open_low=True),
           Option("k2", int, None, "C2's entries kept (default: C's size)", low=1)),
    _entry("3pcv5", "3PCv5: with probability p the dense gradient, else h + C(x - y)",
           lambda o: ThreePCv5(contractive(o), o["p"], seed=o["seed"]), *SIZE, CONTRACTIVE, SEED, P),
    _entry("marina", "MARINA (Gorbunov et al. 2021): dense with probability p, else g_i + Q(x - y); full batches",
           lambda o: MARINA(unbiased(o["q"], o["ratio"], o["k"], o["seed"]), o["p"], seed=o["seed"]),
           *SIZE, compressor_option("q", "randk", UNBIASED, "the unbiased compressor Q"), SEED, P),
    _entry("co3", "CO3 (Chen et al. 2022): float conversion + Huffman (or rANS) coding + error feedback with decay",
           lambda o: CO3(o["fmt"], o["gamma"], coder=o["coder"], scale=o["scale"], rounding=o["rounding"],
                         seed=o["seed"]),
           *CO3_OPTIONS),
    _entry("co3_2s", "CO3 over a two-stage compressed allreduce: chunk payloads to their owners (all_to_all), "
           "owners re-code the chunk mean with their own error feedback, all_gather of the owners' chunks",
           lambda o: CO3TwoStage(o["fmt"], o["gamma"], coder=o["coder"], scale=o["scale"], rounding=o["rounding"],
                                 seed=o["seed"]),
           *CO3_OPTIONS),
    _entry("onebit", "1-bit compressed allreduce (DeepSpeed's for 1-bit Adam, Tang et al. 2021): scaled signs over "
           "the two-stage allreduce, with error feedback on both stages",
           lambda o: TwoStage(ScaledSign(o["block"])),
           Option("block", int, 2048, "entries per bf16 scale", low=1)),
    _entry("lag", "LAG (Chen et al. 2018) in 3PC form: upload the dense change when the trigger fires",
           lambda o: LAG(o["zeta"]), ZETA),
    _entry("lagwk", "LAG-WK: LAG's original rule against the last D aggregate moves",
           lambda o: LAGWK(o["xi"], o["window"]),
           Option("xi", float, 1.0, "trigger weight of the past moves", low=0.0), WINDOW),
    _entry("clag", "CLAG: EF21 that stays silent when the trigger does not fire",
           lambda o: CLAG(contractive(o), o["zeta"]), *SIZE, CONTRACTIVE, SEED, ZETA),
    _entry("sasg", "SASG (Deng et al. 2021): adaptive skipping + Top-K with error feedback",
           lambda o: SASG(contractive(o), window=o["window"], c=o["c"], exact=o["exact"]),
           *SIZE, CONTRACTIVE, SEED, WINDOW,
           Option("c", float, None, "trigger divisor (default: window)", low=0.0, open_low=True),
           Option("exact", bool, False, "the paper's rule (needs ddp_hooks.StaleGradients in the training step)")),
)}


def names(*, ddp: bool = False) -> list[str]:
    """The registered names (``ddp=True``: only those that run as DDP hooks)."""
    return [name for name, e in REGISTRY.items() if e.ddp or not ddp]


def entry(name: str) -> Entry:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown threepc mechanism {name!r}{_did_you_mean([name], REGISTRY)}; known: "
                         f"{', '.join(REGISTRY)}") from None


def _did_you_mean(given: Iterable[str], known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the given names close to a known one, else nothing."""
    known = list(known)
    close = [m[0] for g in given if isinstance(g, str) and (m := difflib.get_close_matches(g, known, 1))]
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


def build(name: str, **options: object) -> Mechanism:
    """The mechanism registered as ``name`` with ``options`` checked against its entry."""
    return entry(name)(**options)


def describe(*, ddp: bool = False) -> str:
    """Every entry (``ddp=True``: the DDP hooks) with its options (type, default, valid values,
    help): what ``--help`` prints."""
    lines = []
    for e in (REGISTRY[name] for name in names(ddp=ddp)):
        lines.append(f"  {e.name}{'' if e.ddp else ' (simulation only)'}: {e.help}")
        lines += [f"      {o.name}={o.default!r}: {o.valid()}; {o.help}" for o in e.options]
    return "\n".join(lines)
