"""What one rank does with the payloads it receives in one round, against the number of ranks n.

    python -m benchmarks.decode_vs_n [--numel 1585162] [--workers 2 4 8 16 32] [--repeats 5]

A dense ring allreduce hands each rank one reduced vector; an all_gather hands it n payloads to
decode. This times, in one process, the aggregate side of one round as one DDP rank runs it
(the hook's ``fold``/``collect`` and the two-stage owner step), on payloads that n simulated
workers produced from random gradients of ``--numel`` entries (the scaling benchmark's MLP):

* ``ef14`` Top-K 1% (all_gather): one sparse add of the n payloads' n K entries;
* ``ef14`` SharedTopK 1.5% (averaging allreduce): one payload, the mean, whatever n;
* ``co3`` fp4-121 (sized all_gather): n coded payloads of d codes decoded;
* ``co3_2s`` fp4-121 (two stages): rank 0's owner step (n chunk payloads of d/n codes decoded,
  averaged, coded again) plus decoding the n owners' chunks of d/n;
* ``ef14`` over scaled signs (all_gather; the default under Adam): n sign payloads of d entries
  added in one pass (``kernels.sign_accumulate``);
* ``onebit`` (two stages): as ``co3_2s`` with signs.

One thread (``--threads``); the minimum over ``--repeats`` calls. Writes benchmarks/results/decode_vs_n.md
(``--out``); ``--methods`` picks rows by name.
"""
from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from pathlib import Path

import torch

from compressors import CO3, EF14, PackedTopK, Payload, Round, ScaledSign, SharedTopK, TopK
from compressors.core.mechanism import Mechanism
from compressors.core.two_stage import TwoStage
from compressors.mechanisms.co3_2s import CO3TwoStage

RESULTS = Path(__file__).parent / "results"
METHODS: dict[str, Callable[[], Mechanism]] = {
    "ef14 topk 1% (all_gather)": lambda: EF14(TopK(0.01)),
    "ef14 PackedTopK 5% (all_gather, the SGD default)": lambda: EF14(PackedTopK(0.05)),
    "ef14 shared_topk 1.5% (allreduce)": lambda: EF14(SharedTopK(0.015)),
    "co3 fp4-121 (all_gather)": lambda: CO3("fp4-121"),
    "co3_2s fp4-121 (two stages)": lambda: CO3TwoStage("fp4-121"),
    "ef14 every sign (all_gather)": lambda: EF14(ScaledSign()),
    "ef14 sign 84% (all_gather, the Adam default's compressor)": lambda: EF14(ScaledSign(fraction=0.84)),
    "onebit (two stages)": lambda: TwoStage(ScaledSign()),
}


def one_round(mechanism: Mechanism, workers: int, numel: int, seed: int = 0
              ) -> tuple[dict[str, torch.Tensor], list[Payload], Round, list[Mechanism]]:
    """The aggregate state after the dense round, and every worker's payload of round 1."""
    gen = torch.Generator().manual_seed(seed)
    ranks = [mechanism.spawn() for _ in range(workers)]
    grads = [torch.randn(numel, generator=gen) for _ in range(workers)]
    server = mechanism.begin([w.init(g, Round(0, i, workers)) for i, (w, g) in enumerate(zip(ranks, grads))],
                             Round(0, 0, workers))
    rnd = Round(1, 0, workers, shared=dict(server))
    payloads = [w.step(g + 0.1 * torch.randn(numel, generator=gen), rnd.of(i)) for i, (w, g) in
                enumerate(zip(ranks, grads))]
    return server, payloads, rnd, ranks


def mean_payload(payloads: list[Payload]) -> Payload:
    """What the averaging allreduce hands every rank."""
    return Payload({k: sum(p.parts[k] for p in payloads) / len(payloads) for k in payloads[0].parts},
                   payloads[0].numel)


def receive(mechanism: Mechanism, workers: int, numel: int) -> Callable[[], None]:
    """A call doing rank 0's share of the round's aggregate work."""
    server, payloads, rnd, ranks = one_round(mechanism, workers, numel)
    if isinstance(mechanism, TwoStage):
        bounds = mechanism.chunks(numel, workers)
        mine = [mechanism.split(p, bounds)[0] for p in payloads]
        relayed = mechanism.fold(copy.deepcopy(server), payloads, rnd)  # every owner's payload
        owner = ranks[0]
        saved = owner.memory.s.clone()

        def two_stage() -> None:
            owner.memory.s.copy_(saved)
            owner.relay(mine, rnd)
            mechanism.collect(server, relayed, rnd)
        return two_stage
    received = [mean_payload(payloads)] if mechanism.summable(mechanism.spec(numel, rnd)) else payloads
    return lambda: mechanism.fold(copy.copy(server), received, rnd)


def timed(call: Callable[[], None], repeats: int) -> float:
    call()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--numel", type=int, default=1_585_162)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch's intra-op threads (the kernels' parallel_for)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="NAME")
    parser.add_argument("--out", type=Path, default=RESULTS / "decode_vs_n.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    threads = "one thread" if args.threads == 1 else f"{args.threads} threads"
    rows = {}
    for name in args.methods:
        make = METHODS[name]
        rows[name] = [timed(receive(make(), n, args.numel), args.repeats) for n in args.workers]
        print(name, [f"{1e3 * t:.1f} ms" for t in rows[name]], flush=True)
    head = " | ".join(f"n={n}" for n in args.workers)
    lines = [f"# Aggregate-side work of one rank per round against n ({args.numel:,} entries, {threads})", "",
             f"Command: `python -m benchmarks.decode_vs_n --numel {args.numel} --workers "
             f"{' '.join(map(str, args.workers))} --repeats {args.repeats} --threads {args.threads}` "
             "(ms, minimum over the repeats).", "",
             f"| method | {head} | n={args.workers[-1]} / n={args.workers[0]} |",
             "|---|" + "---|" * (len(args.workers) + 1)]
    for name, times in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{1e3 * t:.2f}" for t in times) + f" | {times[-1] / times[0]:.1f}× |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
