"""Link bytes: the ring model in ``CommStats`` against the loopback counter of a private network
namespace (``unshare -n``: this rank's traffic is the only traffic on that ``lo``).

Run as a script inside the namespace, this file trains a small MLP on n gloo ranks with a hook
and prints, per (ranks, hook), the namespace's lo tx bytes over the training steps and the sum
of the ranks' ``link_bytes_sent``. TCP/IP headers and the barriers come on top of the model, so
the counter must lie between 1.0 and 1.1 times the model.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from torch import nn

from ddp_hooks.launch import loopback_tx_bytes

CASES = [(2, "gd"), (2, "ef21"), (2, "co3_2s"), (2, "onebit"), (4, "ef21"), (4, "clag"), (4, "gd"), (4, "co3_2s"),
         (4, "onebit"), (4, "ef14")]
# others: {"ratio": 0.01}; ef14 here is the default told an Adam: scaled signs of 84% of the entries, all-gathered
OPTIONS = {"gd": {}, "co3_2s": {"fmt": "fp4-121"}, "onebit": {}, "ef14": {"compressor": "sign", "fraction": 0.84}}


def train(rank: int, hook: str, steps: int) -> dict:
    """``steps`` steps of a small MLP under ``hook``: this namespace's lo tx bytes meanwhile, and the stats."""
    import ddp_hooks
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=0.25)  # several buckets
    state = ddp_hooks.register(ddp, hook, **OPTIONS.get(hook, {"ratio": 0.01}))
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(rank)
    dist.barrier()
    before = loopback_tx_bytes()
    for _ in range(steps):
        x, y = torch.randn(32, 256, generator=gen), torch.randint(0, 10, (32,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
    dist.barrier()
    return {"lo_tx": loopback_tx_bytes() - before, "stats": state.stats.summary()}


def worker(rank: int, workers: int, hooks: list[str], steps: int) -> list[dict]:
    return [train(rank, hook, steps) for hook in hooks]


def main() -> None:
    from ddp_hooks.launch import run_ranks
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for workers in sorted({w for w, _ in CASES}):
        hooks = [h for w, h in CASES if w == workers]
        ranks = run_ranks(worker, workers, hooks, 8)
        for i, hook in enumerate(hooks):
            print(json.dumps({"workers": workers, "hook": hook, "lo_tx": ranks[0][i]["lo_tx"],
                              "model": sum(r[i]["stats"]["link_bytes_sent"] for r in ranks),
                              "stats": ranks[0][i]["stats"]}), flush=True)


@pytest.mark.slow
def test_link_bytes_match_the_loopback_counter_of_a_private_namespace():
    if shutil.which("unshare") is None or shutil.which("ip") is None or \
            subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs root, unshare and ip (iproute2) for a private network namespace")
    done = subprocess.run(["unshare", "-n", sys.executable, __file__], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [(r["workers"], r["hook"]) for r in rows] == CASES
    for r in rows:
        assert 1.0 <= r["lo_tx"] / r["model"] <= 1.1, r
    by = {(r["workers"], r["hook"]): r["stats"] for r in rows}
    # a dense round through the hook is the dense allreduce, plus its 8-byte agreement flag
    assert by[2, "gd"]["link_fraction_of_dense"] == pytest.approx(1.0, rel=1e-3)
    # an all_gathered payload's link share grows with n; the dense allreduce's does not
    assert by[4, "ef21"]["link_fraction_of_dense"] > by[2, "ef21"]["link_fraction_of_dense"]
    assert by[4, "gd"]["link_fraction_of_dense"] == pytest.approx(1.0, rel=1e-3)
    # the two-stage allreduce (all_to_all, then all_gather of the owners' chunks) stays flat in n, like
    # the ring allreduce: its all_to_all and its all_gather each move (n - 1) / n of one coded vector
    for hook in ("co3_2s", "onebit"):
        two_stage = [by[n, hook] for n in (2, 4)]
        assert all(s["collectives"].get("all_to_all") for s in two_stage)
        assert two_stage[1]["link_fraction_of_dense"] < 1.25 * two_stage[0]["link_fraction_of_dense"]
    # signs all-gathered: 3 payloads of 84% of the signs cross each link at n = 4, through two stages 2 x 3/4 of one
    assert by[4, "ef14"]["link_fraction_of_dense"] > by[4, "onebit"]["link_fraction_of_dense"]


if __name__ == "__main__":
    main()
