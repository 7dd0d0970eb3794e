"""Two-stage compressed allreduce (``compressors.core.two_stage``, ``co3_2s``): the owners' steps
that DDP runs on separate ranks (``relay`` with each worker's own s, then ``collect``) compute
what the simulation's ``fold`` computes with every owner's error in its aggregate state."""
from __future__ import annotations

import pytest
import torch

from compressors import Payload, Round
from compressors.core.two_stage import OWNER_ERROR, chunks
from compressors.mechanisms.registry import build
from compressors.sim.simulation import Cluster
from ddp_hooks import wire
from ddp_hooks.stats import CommStats


@pytest.mark.parametrize("numel, workers", [(10, 3), (2, 4), (0, 2), (7, 1), (123, 4)])
def test_chunks_cover_the_tensor_in_order_with_lengths_within_one(numel, workers):
    bounds = chunks(numel, workers)
    assert len(bounds) == workers and bounds[0][0] == 0 and bounds[-1][1] == numel
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    lengths = [hi - lo for lo, hi in bounds]
    assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


def _grads(workers: int, numel: int, t: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 * t + numel)
    return [torch.randn(numel, generator=g) * torch.rand(numel, generator=g) ** 2 for _ in range(workers)]


CONFIGS = {"fp4": {"fmt": "fp4-121"}, "fp8": {"fmt": "fp8-152", "gamma": 1.0},
           "fp4 stochastic empirical": {"fmt": "fp4-121", "coder": "empirical", "scale": "max",
                                        "rounding": "stochastic", "seed": 3},
           "fp8 none": {"fmt": "fp8-143", "coder": "none", "scale": "max"}}


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("numel, workers", [(1000, 4), (501, 3), (3, 4), (64, 1)])
def test_owner_steps_on_separate_workers_equal_the_simulations_fold(config, numel, workers):
    """Every worker as owner of its chunk, payloads through the wire (pack/unpack per chunk), =
    the simulation's fold, bit for bit: g, and the sum of the workers' s = the aggregate's."""
    mechanism = build("co3_2s", **CONFIGS[config])
    cluster = Cluster(mechanism, workers)
    ranks = [mechanism.spawn() for _ in range(workers)]  # the DDP side: one worker per rank
    grads = _grads(workers, numel, 0)
    cluster.init(grads)
    replicas = [mechanism.begin([w.init(g, Round(0, i, workers)) for i, (w, g) in enumerate(zip(ranks, grads))])
                for _ in range(workers)]
    bounds = chunks(numel, workers)
    for t in range(1, 6):
        grads = _grads(workers, numel, t)
        sent = cluster.step(grads)
        rnd = Round(t, 0, workers)
        spec = mechanism.spec(numel, rnd)
        stage1 = [w.step(g, rnd.of(i)) for i, (w, g) in enumerate(zip(ranks, grads))]
        assert all(list(p.parts) == [part.name for part in spec] for p in stage1)  # the declared parts
        relayed = []
        for j, w in enumerate(ranks):
            cspec = mechanism.chunk_spec(bounds[j][1] - bounds[j][0])
            received = [wire.unpack(wire.pack(p.sub(str(j)), cspec), cspec, bounds[j][1] - bounds[j][0])
                        for p in stage1]
            out = w.relay(received, rnd.of(j))
            assert out is not None
            relayed.append(wire.unpack(wire.pack(out, cspec), cspec, bounds[j][1] - bounds[j][0]))
        for server in replicas:
            mechanism.collect(server, relayed, rnd)
        for server in replicas:
            assert torch.equal(server["g"], cluster.g)
        assert torch.equal(sum(w.memory.s for w in ranks), cluster.server[OWNER_ERROR])
        for w, c in zip(ranks, cluster.workers):
            assert torch.equal(w.memory.e_i, c.memory.e_i)
        for j, w in enumerate(ranks):  # s is zero outside the owned chunk
            lo, hi = bounds[j]
            assert not w.memory.s[:lo].any() and not w.memory.s[hi:].any()
        # the simulation counts each worker's chunk payloads and its owner payload
        assert [p.total_bits() for p in sent] == [a.total_bits() + b.total_bits() for a, b in zip(stage1, relayed)]
    if numel >= 64:
        mean = torch.stack(grads).mean(0)
        assert (cluster.g - mean).norm() < 0.6 * mean.norm()


def test_two_stage_co3_follows_co3_on_a_gradient_stream():
    """Two quantizations with error feedback on both still average the gradients: over many rounds
    the sum of g tracks the sum of the mean gradients as closely as CO3's does."""
    workers, numel, rounds = 4, 2000, 30
    totals = {}
    for name in ("co3", "co3_2s"):
        cluster = Cluster(build(name, fmt="fp4-121", gamma=1.0), workers)
        cluster.init(_grads(workers, numel, 0))
        total, want = torch.zeros(numel), torch.zeros(numel)
        for t in range(1, rounds + 1):
            grads = _grads(workers, numel, t)
            cluster.step(grads)
            total += cluster.g
            want += torch.stack(grads).mean(0)
        totals[name] = float((total - want).norm() / want.norm())
    assert totals["co3_2s"] < 0.1 and totals["co3_2s"] < 3 * totals["co3"], totals


def test_an_owner_whose_mean_overflows_writes_nothing():
    mechanism = build("co3_2s", fmt="fp8-152", gamma=1.0, scale="max", coder="none")
    workers, numel = 2, 8
    owners = [mechanism.spawn() for _ in range(workers)]
    for i, w in enumerate(owners):
        w.init(torch.zeros(numel), Round(0, i, workers))
        w.memory.s.fill_(3e38)  # the owner's error alone is finite; the mean plus it is not
    rnd = Round(1, 0, workers)
    big = torch.full((numel,), 3e38)
    stage1 = [w.step(big, rnd.of(i)) for i, w in enumerate(owners)]
    received = [Payload(p.sub("0").parts, numel // 2) for p in stage1]
    before = owners[0].memory.s.clone()
    assert owners[0].relay(received, rnd.of(0)) is None
    assert torch.equal(owners[0].memory.s, before)


@pytest.mark.parametrize("workers", [2, 4, 8, 16])
def test_all_to_all_link_bytes_are_n_minus_one_over_n_of_the_buffer(workers):
    stats = CommStats()
    stats.ring_all_to_all(workers * 1000, workers)
    assert stats.link_sent == stats.link_received == (workers - 1) * 1000
