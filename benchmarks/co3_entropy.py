"""CO3's coded size against the empirical entropy of its codes, on the demo model's gradients
(the README's entropy table), Huffman and rANS side by side, each of a GenNorm model or of the
message's own histogram.

    python -m benchmarks.co3_entropy [--steps 300] [--join 1] [--synthetic]

One process trains the demo MLP (123-64-64-2) on a9a with plain SGD (lr 0.1, batch 64). At every
step the whole gradient g (one vector of 12,226 values, like a one-bucket DDP model) goes
through CO3's error feedback with decay: v = g + gamma e, payload = Q(v), e <- v - Q(v)
(gamma = 0.7); ``--join k`` makes each message k consecutive gradients (k x 12,226 values, like a
model k times larger), which shows the message size at which the fixed description costs pay
off. Per coder it prints, averaged over the steps:

* H: the empirical entropy of the message's codes (bits per value; what an ideal coder of
  that message's own histogram would need, with no description of the code);
* H_model: the codes' cross entropy under the model the coder actually used, -sum_i log2 q(s_i)
  per value, q = f / M for rANS (its quantized frequencies), 2^-length for Huffman (so Huffman's
  stream is H_model but for padding);
* the coded stream alone and the whole payload (stream, fp32 scale and code description), in
  bits per value, the stream's excess over H and over H_model, and the payload's excess over H
  plus that side information and over H alone, in percent. rANS of the histogram carries its
  code description (the histogram header, ``codecs.histogram``) at the head of ``bytes``: it is
  counted as description here, not as stream.

``--synthetic``: instead, GenNorm(beta) values (beta 1: Laplace, 1.5, 2: Gauss) with 20% exact
zeros, 64K, 1M and 4M values, seeds 0-2, through ``FloatQuantizer(fmt, scale="gennorm")``
without error feedback; per format, coder and size, the stream's excess over H and over H_model
as min / mean / max over the betas and seeds.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

from ddp_hooks.testbed import MLP, load_a9a
from compressors import FloatQuantizer
from compressors.codecs.huffman import HuffmanTable, entropy_bits

LABELS = {"huffman": "Huffman (GenNorm model)", "rans": "rANS (GenNorm model)", "empirical": "Huffman (histogram)",
          "rans_empirical": "rANS (histogram)"}
CODERS = {f"{fmt}, {label}": FloatQuantizer(fmt, coder=coder, scale="gennorm")
          for fmt in ("fp8-152", "fp8-143", "fp4-121") for coder, label in LABELS.items()}
GAMMA = 0.7
SYNTHETIC_SIZES = {"64K": 1 << 16, "1M": 1 << 20, "4M": 1 << 22}
BETAS = (1.0, 1.5, 2.0)


def gradients(steps: int, seed: int = 0) -> list[torch.Tensor]:
    """The flattened gradient of every SGD step of the demo MLP on a9a."""
    data = load_a9a()
    torch.manual_seed(seed)
    model = MLP(data["x_train"].shape[1], 64, False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy((data["y_train"] > 0).astype(np.int64))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    grads = []
    for step in range(steps):
        batch = order[(step * 64) % len(y):][:64]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone())
        opt.step()
    return grads


def model_bits(quantizer: FloatQuantizer, message) -> float:
    """-sum_i log2 q(s_i) of the message's symbols under the coder's own model q."""
    table = quantizer.table(message)
    symbols = quantizer.symbols(quantizer.codes(message))
    return table.coded_bits(symbols) if isinstance(table, HuffmanTable) else table.ideal_bits(symbols)


def measure_message(quantizer: FloatQuantizer, v: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
    """Bits per value of one message of v (and the fp32 values it decodes to)."""
    message, q = quantizer.encode(v)
    bits = message.bits()
    n = v.numel()
    stream = 8 * quantizer.coded(message)[1].numel()  # without a leading histogram header
    return {"entropy": entropy_bits(quantizer.codes(message), quantizer.fmt.codes),
            "model": model_bits(quantizer, message) / n, "stream": stream / n, "payload": sum(bits.values()) / n,
            "description": (sum(bits.values()) - stream) / n}, q


def measure(quantizer: FloatQuantizer, grads: list[torch.Tensor]) -> dict[str, float]:
    """The mean over CO3's messages (error feedback with decay GAMMA) of measure_message."""
    e = torch.zeros_like(grads[0])
    total: dict[str, float] = {}
    for g in grads:
        v = g + GAMMA * e
        m, q = measure_message(quantizer, v)
        e = v - q
        total = {k: total.get(k, 0.0) + x for k, x in m.items()}
    return {k: x / len(grads) for k, x in total.items()}


def gennorm_values(n: int, beta: float, seed: int, zeros: float = 0.2) -> torch.Tensor:
    """|x|^beta ~ Gamma(1/beta), random signs, a fraction ``zeros`` set to exactly 0."""
    g = np.random.default_rng(seed)
    x = g.gamma(1 / beta, size=n) ** (1 / beta) * g.choice([-1.0, 1.0], n) * (g.random(n) >= zeros)
    return torch.from_numpy(x).float()


def synthetic() -> None:
    print("GenNorm values (beta 1, 1.5, 2; 20% zeros; seeds 0-2): stream over H and over H_model, min / mean / max")
    print("| format, coder | values | H (bits/value) | stream over H | stream over H_model |")
    print("|---|---|---|---|---|")
    for name, quantizer in CODERS.items():
        for size, n in SYNTHETIC_SIZES.items():
            runs = [measure_message(quantizer, gennorm_values(n, beta, seed))[0] for beta in BETAS for seed in range(3)]
            over_h = np.array([m["stream"] / m["entropy"] - 1 for m in runs])
            over_model = np.array([m["stream"] / m["model"] - 1 for m in runs])
            spread = " | ".join(f"{a.min():+.2%} / {a.mean():+.2%} / {a.max():+.2%}" for a in (over_h, over_model))
            print(f"| {name} | {size} | {np.mean([m['entropy'] for m in runs]):.3f} | {spread} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--join", type=int, default=1, help="consecutive gradients per message")
    parser.add_argument("--synthetic", action="store_true", help="GenNorm values of 64K to 4M instead")
    args = parser.parse_args()
    if args.synthetic:
        return synthetic()
    grads = gradients(args.steps)
    grads = [torch.cat(grads[i:i + args.join]) for i in range(0, len(grads) - args.join + 1, args.join)]
    print(f"demo MLP gradients, {args.steps} SGD steps, {grads[0].numel()} values per message "
          f"({args.join} per message), CO3 gamma {GAMMA}")
    print("| coder | entropy H (bits/value) | H_model | coded stream | stream over H | stream over H_model | "
          "whole payload | payload over H + side information | payload over H |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, quantizer in CODERS.items():
        m = measure(quantizer, grads)
        excess = m["payload"] / (m["entropy"] + m["description"]) - 1
        print(f"| {name} | {m['entropy']:.3f} | {m['model']:.3f} | {m['stream']:.3f} | "
              f"{m['stream'] / m['entropy'] - 1:+.2%} | {m['stream'] / m['model'] - 1:+.2%} | {m['payload']:.3f} | "
              f"{excess:+.1%} | {m['payload'] / m['entropy'] - 1:+.2%} |", flush=True)


if __name__ == "__main__":
    main()
