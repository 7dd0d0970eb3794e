"""Communication vs accuracy on a LIBSVM data set: the EF21/3PC papers' experiment.

One run::

    python -m benchmarks.convergence --dataset benchmarks/data/a9a.gz --rows 32561 --workers 20 \\
        --method ef21 --k 4 --multiplier 64 --tol 1e-6 --max-iters 5000 --json out.json

A sweep (stepsize multipliers 2^0..2^12 per method, K x zeta grids; the best setting per method
is the one reaching the tolerance with the fewest bits per worker)::

    python -m benchmarks.convergence --dataset benchmarks/data/a9a.gz --rows 32561 --sweep \\
        --method all --ks 1,2,4,8 --zetas 0.25,1,4 --json sweep.json --plot sweep.png --heatmap clag.png

The stepsize is M x the mechanism's Theorem-1 gamma = 1/(L_- + L_tilde sqrt(B/A))
(``compressors.sim.theory``); bits follow ``compressors.sim.simulation``'s conventions.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import time
import sys
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from benchmarks.progress import report
from compressors import Mechanism
from compressors.mechanisms.registry import REGISTRY, build, describe
from compressors.sim import theory
from compressors.sim.datasets import load_libsvm
from compressors.sim.problems import PROBLEMS, FiniteSum
from compressors.sim.simulation import run

METHODS = tuple(n for n in REGISTRY if n not in ("co3", "co3_2s", "sasg"))  # the registry's mechanisms with (A, B) or LAG-WK
USES_K = frozenset(n for n in METHODS if any(o.name == "k" for o in REGISTRY[n].options))
USES_ZETA = frozenset(n for n in METHODS if any(o.name == "zeta" for o in REGISTRY[n].options))
MULTIPLIERS = tuple(2.0**i for i in range(13))
SWEPT = ("gd", "ef14", "ef21", "ef21plus", "lag", "clag", "3pcv2", "3pcv4", "3pcv5", "marina")  # --method all


@dataclass(frozen=True)
class Setting:
    """One run's configuration (what a sweep varies)."""

    method: str
    k: int = 1
    zeta: float = 1.0
    p: float | None = None  # 3PCv5/MARINA: probability of a dense round (default K/d)
    k2: int | None = None  # 3PCv4's second Top-K (default K)
    q: str = "randk"  # MARINA's compressor: randk or permk
    eta: float = 0.1
    multiplier: float = 1.0
    seed: int = 0

    def mechanism(self, dim: int) -> Mechanism:
        """The registry's mechanism with this setting's values for the options it takes."""
        values = {"k": self.k, "zeta": self.zeta, "xi": self.zeta, "k2": self.k2, "q": self.q, "eta": self.eta,
                  "seed": self.seed, "p": self.p if self.p is not None else min(1.0, self.k / dim)}
        taken = {o.name for o in REGISTRY[self.method].options}
        return build(self.method, **{k: v for k, v in values.items() if k in taken})

    def label(self) -> str:
        parts = [self.method]
        if self.method in USES_K:
            parts.append(f"K={self.k}")
        if self.method in USES_ZETA or self.method == "lagwk":
            parts.append(f"zeta={self.zeta:g}")
        return " ".join(parts + [f"M={self.multiplier:g}"])


@dataclass(frozen=True)
class Options:
    dataset: str
    rows: int | None
    problem: str
    lam: float
    workers: int
    tol: float
    max_iters: int
    max_bits: float
    x0: str
    seed: int


_problem: FiniteSum | None = None  # one per process (sweep workers load it once)
_options: Options | None = None


def load_problem(options: Options) -> FiniteSum:
    x, y = load_libsvm(options.dataset)
    if options.rows is not None:
        x, y = x[:options.rows], y[:options.rows]
    return FiniteSum.from_arrays(x, y, options.workers, options.problem, options.lam)


def _initialise(options: Options) -> None:
    global _problem, _options
    torch.set_num_threads(1)
    _problem, _options = load_problem(options), options


def run_setting(setting: Setting) -> dict[str, object]:
    """Run one setting on the process's problem; its summary and a downsampled curve."""
    problem, options = _problem, _options
    mechanism = setting.mechanism(problem.dim)
    gamma = setting.multiplier * theory.stepsize(mechanism, problem.dim, problem.l_minus, problem.l_tilde,
                                                 problem.workers)
    x0 = None
    if options.x0 == "normal":
        x0 = torch.randn(problem.dim, generator=torch.Generator().manual_seed(options.seed))
    trace = run(problem, mechanism, gamma, tol=options.tol, max_iters=options.max_iters, x0=x0,
                max_bits=options.max_bits)
    keep = np.unique(np.linspace(0, trace.rounds, min(trace.rounds + 1, 400)).astype(int))
    return {"setting": asdict(setting), "label": setting.label(), "mechanism": repr(mechanism), "stepsize": gamma,
            **trace.summary(),
            "curve": {"round": keep.tolist(), "grad_norm_sq": [trace.grad_norm_sq[i] for i in keep],
                      "bits": [trace.bits[i] for i in keep],
                      "bits_with_indices": [trace.bits_with_indices[i] for i in keep]}}


def best(results: list[dict[str, object]]) -> dict[str, object]:
    """Fewest bits to the tolerance; if none reached it, the lowest final ||grad f||^2."""
    reached = [r for r in results if r["converged"]]
    if reached:
        return min(reached, key=lambda r: (r["bits_to_tol"], r["rounds"]))
    finite = [r for r in results if not r["diverged"]] or results
    return min(finite, key=lambda r: r["final_grad_norm_sq"])


def grid(args: argparse.Namespace) -> list[Setting]:
    methods = SWEPT if args.method == "all" else tuple(args.method.split(","))
    multipliers = [float(m) for m in args.multipliers.split(",")] if args.multipliers else MULTIPLIERS
    ks = [int(k) for k in args.ks.split(",")] if args.ks else [args.k]
    zetas = [float(z) for z in args.zetas.split(",")] if args.zetas else [args.zeta]
    base = Setting(args.method if args.method in METHODS else "gd", args.k, args.zeta, args.p, args.k2, args.q,
                   args.eta, args.multiplier, args.seed)
    out = []
    for method in methods:
        for k in ks if method in USES_K else [args.k]:
            for zeta in zetas if method in USES_ZETA else [args.zeta]:
                out += [replace(base, method=method, k=k, zeta=zeta, multiplier=m) for m in multipliers]
    return out


def _fmt_bits(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def table(rows: list[dict[str, object]]) -> str:
    lines = ["| setting | stepsize | rounds | bits/worker (values) | bits/worker (with indices) | final ||grad f||^2 |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        status = "" if r["converged"] else (" (diverged)" if r["diverged"] else " (not reached)")
        lines.append(f"| {r['label']} | {r['stepsize']:.4g} | {r['rounds']}{status} | {_fmt_bits(r['bits_to_tol'])} | "
                     f"{_fmt_bits(r['bits_with_indices_to_tol'])} | {r['final_grad_norm_sq']:.2e} |")
    return "\n".join(lines)


def plot_curves(rows: list[dict[str, object]], path: str, tol: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        c = r["curve"]  # from the first compressed round on (the dense initial round is not counted)
        ax.plot(c["bits"][1:], c["grad_norm_sq"][1:], label=r["label"])
    ax.axhline(tol, color="grey", lw=0.8, ls="--")
    ax.set(xscale="log", yscale="log", xlabel="bits per worker (values, 32 per float)",
           ylabel=r"$\|\nabla f(x^t)\|^2$", title="best stepsize multiplier per method")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_heatmap(results: list[dict[str, object]], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    clag = [r for r in results if r["setting"]["method"] == "clag"]
    if not clag:
        raise SystemExit("--heatmap needs clag runs in the sweep (--method all or a list with clag)")
    ks = sorted({r["setting"]["k"] for r in clag})
    zetas = sorted({r["setting"]["zeta"] for r in clag})
    cells = np.full((len(ks), len(zetas)), np.nan)
    for i, k in enumerate(ks):
        for j, z in enumerate(zetas):
            b = best([r for r in clag if r["setting"]["k"] == k and r["setting"]["zeta"] == z])
            if b["converged"]:
                cells[i, j] = b["bits_to_tol"]
    fig, ax = plt.subplots(figsize=(1.2 * len(zetas) + 2, 0.8 * len(ks) + 1.5))
    image = ax.imshow(np.log10(cells), cmap="viridis_r", aspect="auto")
    for (i, j), v in np.ndenumerate(cells):
        ax.text(j, i, "-" if np.isnan(v) else f"{v / 1e3:.1f}k", ha="center", va="center", fontsize=8)
    ax.set(xticks=range(len(zetas)), xticklabels=[f"{z:g}" for z in zetas], yticks=range(len(ks)),
           yticklabels=[str(k) for k in ks], xlabel=r"$\zeta$", ylabel="K",
           title="CLAG: bits per worker to tolerance (best multiplier)")
    fig.colorbar(image, label="log10 bits")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="mechanisms (compressors.mechanisms.registry) and their options:\n" + describe())
    ap.add_argument("--dataset", required=True, help="LIBSVM file (.gz read directly); labels +-1, 0/1 or 1/2")
    ap.add_argument("--rows", type=int, help="use the first N rows (a9a's training set: 32561)")
    ap.add_argument("--problem", choices=PROBLEMS, default="logistic")
    ap.add_argument("--lam", type=float, default=0.1, help="nonconvex regulariser weight")
    ap.add_argument("--workers", type=int, default=20)
    ap.add_argument("--method", default="ef21", help=f"one of {', '.join(METHODS)}; a sweep takes a list or 'all'")
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--k2", type=int, help="3PCv4's second Top-K (default K)")
    ap.add_argument("--zeta", type=float, default=1.0, help="LAG/CLAG trigger (LAG-WK: xi)")
    ap.add_argument("--p", type=float, help="3PCv5/MARINA dense-round probability (default K/d)")
    ap.add_argument("--q", choices=("randk", "randk_shared", "permk"), default="randk",
                    help="MARINA's unbiased compressor")
    ap.add_argument("--eta", type=float, default=0.1, help="EF21-SGDM momentum weight")
    ap.add_argument("--multiplier", type=float, default=1.0, help="stepsize = M x the theoretical gamma")
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--max-iters", type=int, default=10_000)
    ap.add_argument("--max-bits", type=float, default=math.inf, help="stop a run after this many bits per worker")
    ap.add_argument("--x0", choices=("zeros", "normal"), default="zeros")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results (with curves) here")
    ap.add_argument("--sweep", action="store_true", help="sweep multipliers (and --ks, --zetas grids)")
    ap.add_argument("--multipliers", help="comma list (default 2^0..2^12)")
    ap.add_argument("--ks", help="comma list of K for the sweep")
    ap.add_argument("--zetas", help="comma list of zeta for the sweep (LAG, CLAG)")
    ap.add_argument("--plot", help="PNG of ||grad f||^2 vs bits, best setting per method")
    ap.add_argument("--heatmap", help="PNG of CLAG's best bits over the K x zeta grid")
    ap.add_argument("--jobs", type=int, default=max(1, (multiprocessing.cpu_count() or 1)))
    args = ap.parse_args(argv)
    unknown = set(SWEPT if args.method == "all" else args.method.split(",")) - set(METHODS)
    if unknown:
        ap.error(f"unknown method(s) {sorted(unknown)}; choose from {', '.join(METHODS)} (or 'all' with --sweep)")
    if not args.sweep and (args.method == "all" or "," in args.method):
        ap.error("several methods need --sweep")
    return args


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse(argv)
    options = Options(args.dataset, args.rows, args.problem, args.lam, args.workers, args.tol, args.max_iters,
                      args.max_bits, args.x0, args.seed)
    settings = grid(args) if args.sweep else [Setting(args.method, args.k, args.zeta, args.p, args.k2, args.q,
                                                      args.eta, args.multiplier, args.seed)]
    _initialise(options)
    problem = _problem
    print(f"{args.dataset}: {problem.features.shape[0]} rows, d = {problem.dim}, n = {problem.workers} workers, "
          f"L_- = {problem.l_minus:.4f}, L_tilde = {problem.l_tilde:.4f}, tol = {args.tol:g}", flush=True)
    started, results = time.time(), []
    with multiprocessing.get_context("spawn").Pool(args.jobs, _initialise, (options,)) if len(settings) > 1 and \
            args.jobs > 1 else contextlib.nullcontext() as pool:
        for result in (pool.imap(run_setting, settings) if pool else map(run_setting, settings)):
            results.append(result)
            if len(settings) > 1:
                report(len(results), len(settings), started, result["label"])
    methods = list(dict.fromkeys(r["setting"]["method"] for r in results))
    shown = [best([r for r in results if r["setting"]["method"] == m]) for m in methods]
    print(table(shown))
    out = {"options": asdict(options), "problem": {"rows": problem.features.shape[0], "dim": problem.dim,
                                                   "l_minus": problem.l_minus, "l_tilde": problem.l_tilde},
           "best": shown, "runs": [{k: v for k, v in r.items() if k != "curve"} for r in results]}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f)
    if args.plot:
        plot_curves(shown, args.plot, args.tol)
    if args.heatmap:
        plot_heatmap(results, args.heatmap)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
