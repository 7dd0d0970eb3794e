"""Multi-process DDP training on localhost gloo with a threepc hook (``make demo``).

Trains a small MLP on a9a (LIBSVM; UCI Adult) with n gloo ranks, each holding a contiguous
shard of the 32,561 training rows, and prints per epoch: loss, test accuracy on the 16,281
test rows, and the bytes each rank sent against dense allreduce training
(``ddp_hooks.testbed`` is the training itself).

    python -m benchmarks.demo --workers 2 --hook ef21 --ratio 0.01
    python -m benchmarks.demo --workers 2 --hook allreduce          # the dense baseline
"""
from __future__ import annotations

import argparse
import ast
import dataclasses

import numpy as np

import ddp_hooks
from compressors.mechanisms.registry import describe
from ddp_hooks.testbed import TrainConfig, hook_options, load_a9a, train

HOOKS = ("allreduce", "fp16", *ddp_hooks.MECHANISMS)


def table_baseline(description: str) -> tuple[dict[str, np.ndarray], dict[str, object], dict]:
    """For the table scripts: parse ``--workers``/``--epochs``, load a9a and run the allreduce
    baseline; returns (data, the TrainConfig fields every row shares, rank 0's baseline result)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    data = load_a9a()
    base = dict(workers=args.workers, epochs=args.epochs, lr=0.1)
    return data, base, train(TrainConfig(hook="allreduce", **base), data)[0]


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--opt takes KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value  # a plain string such as fp8-152


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="hooks (ddp_hooks.MECHANISMS) and their --opt options:\n" + describe(ddp=True))
    parser.add_argument("--hook", choices=HOOKS, default=TrainConfig.hook,
                        help="a threepc hook, 'allreduce' (DDP's default) or 'fp16' (torch's fp16_compress_hook)")
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("verbose", "options", "hook"):
            continue
        if f.type == "bool":
            parser.add_argument(f"--{f.name.replace('_', '-')}", action="store_true")
        else:
            kind = {"int": int, "float": float, "str": str}[f.type]
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default)
    parser.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                        help="a registry option of the hook (repeatable), e.g. --opt fmt=fp4-121 --opt gamma=1.0; "
                             "replaces the options the demo derives from --ratio/--eta/--p")
    args = vars(parser.parse_args())
    options = dict(_option(o) for o in args.pop("opt")) or None
    config = TrainConfig(**args, options=options, verbose=True)
    if config.hook in ddp_hooks.MECHANISMS:
        try:  # refuse bad options here, in one line, before any rank starts
            ddp_hooks.mechanism(config.hook, **(options if options is not None else hook_options(config)))
        except ValueError as e:
            parser.error(str(e))
    data = load_a9a()
    results = train(config, data)
    r0 = results[0]
    print(f"final test accuracy {r0['final_accuracy']:.4f} after {r0['steps']} steps; "
          f"replicas identical: {all(r['params_identical'] for r in results)}")
    if r0["stats"]:
        s = r0["stats"]
        print(f"bytes sent per rank: {s['bytes_sent_total']:,} of {s['bytes_dense_equivalent']:,} dense-equivalent "
              f"({s['fraction_of_dense']:.2%}); by kind: {s['bytes_sent']}; dense rounds {s['dense_rounds']}, "
              f"compressed rounds {s['compressed_rounds']}")


if __name__ == "__main__":
    main()
