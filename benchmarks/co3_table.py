"""CO3 against half-precision DDP on the demo model (the README's CO3 table).

    python -m benchmarks.co3_table [--workers 2] [--epochs 3]

Every row trains the demo MLP on a9a with the same seed, data order and number of steps
(plain SGD, lr 0.1, batch 64 per rank) and prints the final test accuracy and what each rank
sent: bits per gradient value over the compressed rounds (values, scale, code description,
header and padding all counted) and the fraction of dense fp32 bytes. ``fp16`` is torch's
``fp16_compress_hook`` (16 bits per value).
"""
from __future__ import annotations

import time

from benchmarks.progress import report
from benchmarks.demo import table_baseline
from ddp_hooks.testbed import TrainConfig, train

ROWS = {
    "fp16_compress_hook": ("fp16", {}),
    "CO3 fp8-152, no coding": ("co3", {"fmt": "fp8-152", "coder": "none", "scale": "max"}),
    "CO3 fp8-152 + Huffman (GenNorm model)": ("co3", {"fmt": "fp8-152", "coder": "huffman", "scale": "gennorm"}),
    "CO3 fp8-152 + Huffman (histogram)": ("co3", {"fmt": "fp8-152", "coder": "empirical", "scale": "gennorm"}),
    "CO3 fp4-121 + Huffman (GenNorm model, code pairs)": ("co3", {"fmt": "fp4-121", "coder": "huffman", "scale": "gennorm"}),
    "CO3 fp4-121 + Huffman (histogram)": ("co3", {"fmt": "fp4-121", "coder": "empirical", "scale": "gennorm"}),
}


def bits_per_value(result: dict) -> float:
    """Bits this rank sent per gradient value in the compressed rounds (the dense warm-up excluded)."""
    stats = result["stats"]
    if stats is None:  # fp16_compress_hook
        return 16.0
    sent = stats["bytes_sent_total"] - stats["bytes_sent"].get("dense", 0)
    values = stats["bytes_dense_equivalent"] * stats["compressed_rounds"] / (
        stats["compressed_rounds"] + stats["dense_rounds"]) / 4
    return 8 * sent / values


def main() -> None:
    data, base, dense = table_baseline(__doc__.split("\n\n")[0])
    print(f"allreduce (fp32): test accuracy {dense['final_accuracy']:.4f} after {dense['steps']} steps")
    print("| hook | test accuracy | gap (pp) | bits / value | bytes / dense |")
    print("|---|---|---|---|---|")
    started = time.time()
    for i, (name, (hook, options)) in enumerate(ROWS.items()):
        report(i, len(ROWS), started, name)
        r = train(TrainConfig(hook=hook, options=options, **base), data)[0]
        fraction = r["stats"]["fraction_of_dense"] if r["stats"] else 0.5
        print(f"| {name} | {r['final_accuracy']:.4f} | {100 * (dense['final_accuracy'] - r['final_accuracy']):+.2f} | "
              f"{bits_per_value(r):.2f} | {fraction:.2%} |", flush=True)


if __name__ == "__main__":
    main()
