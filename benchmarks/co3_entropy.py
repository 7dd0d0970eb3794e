"""CO3's coded size against the empirical entropy of its codes, on the demo model's gradients
(the README's entropy table).

    python -m benchmarks.co3_entropy [--steps 300]

One process trains the demo MLP (123-64-64-2) on a9a with plain SGD (lr 0.1, batch 64). At every
step the whole gradient g (one vector of 12,226 values, like a one-bucket DDP model) goes
through CO3's error feedback with decay: v = g + gamma e, payload = Q(v), e <- v - Q(v)
(gamma = 0.7). Per coder it prints, averaged over the steps:

* H: the empirical entropy of the message's codes (bits per value; what an ideal coder of
  that message's own histogram would need, with no description of the code);
* the coded stream alone and the whole payload (stream, fp32 scale and code description), in
  bits per value, and the payload's excess over H plus that side information, in percent.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

from ddp_hooks.testbed import MLP, load_a9a
from compressors import FloatQuantizer
from compressors.codecs.huffman import entropy_bits

CODERS = {
    "fp8-152, Huffman (GenNorm model)": FloatQuantizer("fp8-152", coder="huffman", scale="gennorm"),
    "fp8-152, Huffman (histogram)": FloatQuantizer("fp8-152", coder="empirical", scale="gennorm"),
    "fp4-121, Huffman (GenNorm model)": FloatQuantizer("fp4-121", coder="huffman", scale="gennorm"),
    "fp4-121, Huffman (histogram)": FloatQuantizer("fp4-121", coder="empirical", scale="gennorm"),
}
GAMMA = 0.7


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


def measure(quantizer: FloatQuantizer, grads: list[torch.Tensor]) -> dict[str, float]:
    e = torch.zeros_like(grads[0])
    entropy = stream = payload = description = 0.0
    for g in grads:
        v = g + GAMMA * e
        message, q = quantizer.encode(v)
        e = v - q
        bits = message.bits()
        entropy += entropy_bits(quantizer.codes(message), quantizer.fmt.codes)
        stream += bits["bytes"] / v.numel()
        payload += sum(bits.values()) / v.numel()
        description += (sum(bits.values()) - bits["bytes"]) / v.numel()
    n = len(grads)
    return {"entropy": entropy / n, "stream": stream / n, "payload": payload / n, "description": description / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    grads = gradients(args.steps)
    print(f"demo MLP gradients, {args.steps} SGD steps, {grads[0].numel()} values per message, CO3 gamma {GAMMA}")
    print("| coder | entropy H (bits/value) | coded stream | whole payload | payload over H + side information |")
    print("|---|---|---|---|---|")
    for name, quantizer in CODERS.items():
        m = measure(quantizer, grads)
        excess = m["payload"] / (m["entropy"] + m["description"]) - 1
        print(f"| {name} | {m['entropy']:.3f} | {m['stream']:.3f} | {m['payload']:.3f} | {excess:+.1%} |", flush=True)


if __name__ == "__main__":
    main()
