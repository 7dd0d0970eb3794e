"""EF21 as a standalone mechanism: the update rule, its invariant and its constants."""
from __future__ import annotations


import pytest
import torch

from compressors import EF21, EF21SGDM, Compressor, PartSpec, Payload, Round, TopK
from compressors.sim.simulation import Cluster


class UnfusedTopK(Compressor):
    """Top-K through the generic compress/decompress path (EF21 fuses only a real TopK)."""

    def __init__(self, ratio: float) -> None:
        self.inner = TopK(ratio=ratio)

    def compress(self, x: torch.Tensor, rnd: Round = Round()) -> Payload:
        return self.inner.compress(x, rnd)

    def decompress(self, payload: Payload, rnd: Round = Round()) -> torch.Tensor:
        return self.inner.decompress(payload, rnd)

    def spec(self, numel: int, rnd: Round = Round()) -> list[PartSpec]:
        return self.inner.spec(numel, rnd)

    def alpha(self, numel: int) -> float:
        return self.inner.alpha(numel)


def run_workers(mechanism, grads_per_round):
    """n workers and one aggregate, as in Alg. 1; returns the workers and the estimate g."""
    cluster = Cluster(mechanism, len(grads_per_round[0]))
    cluster.init(grads_per_round[0])
    for grads in grads_per_round[1:]:
        cluster.step(grads)
    return cluster.workers, cluster.g


def drifting_grads(n: int, d: int, rounds: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    base = [torch.randn(d, generator=g) for _ in range(n)]
    return [[b + 0.1 * t * torch.randn(d, generator=g) for b in base] for t in range(rounds)]


@pytest.mark.parametrize("n", [1, 2, 5])
def test_estimate_is_the_mean_of_the_worker_estimates(n):
    workers, estimate = run_workers(EF21(TopK(ratio=0.02)), drifting_grads(n, 5000, 30))
    mean = torch.stack([w.memory.g_i for w in workers]).mean(0)
    assert torch.allclose(estimate, mean, atol=1e-5)


def test_worker_estimate_follows_alg1():
    worker = EF21(TopK(k=3))
    worker.init(torch.zeros(8))
    grad = torch.tensor([5.0, -1.0, 0.5, -7.0, 2.0, 0.0, 6.0, 0.1])
    payload = worker.step(grad)
    # c = TopK_3(grad - 0) keeps 5, -7, 6; g_i = 0 + c
    assert payload.parts["indices"].tolist() == [0, 3, 6]
    assert payload.parts["values"].tolist() == [5.0, -7.0, 6.0]
    assert worker.memory.g_i.tolist() == [5.0, 0, 0, -7.0, 0, 0, 6.0, 0]
    # next round compresses the difference to the new gradient
    payload = worker.step(torch.tensor([5.0, -1.0, 0.5, -7.0, 2.0, 0.0, 6.0, 0.1]))
    assert payload.parts["indices"].tolist() == [1, 2, 4]


def test_error_to_a_fixed_gradient_contracts_by_at_least_one_minus_alpha():
    grad = torch.randn(10_000)
    worker = EF21(TopK(ratio=0.05))
    worker.init(torch.zeros(10_000))
    error = grad.norm() ** 2
    for _ in range(20):
        worker.step(grad)
        new_error = (worker.memory.g_i - grad).norm() ** 2
        assert new_error <= (1 - 0.05) * error + 1e-6
        error = new_error


def test_fused_kernel_path_equals_the_generic_compressor_path():
    grads = drifting_grads(3, 4000, 15, seed=1)
    fused_workers, fused = run_workers(EF21(TopK(ratio=0.01)), grads)
    generic_workers, generic = run_workers(EF21(UnfusedTopK(ratio=0.01)), grads)
    for a, b in zip(fused_workers, generic_workers):
        assert torch.equal(a.memory.g_i, b.memory.g_i)
    # the generic aggregate adds dense decompressed tensors (torch may fuse alpha * x + out)
    assert torch.allclose(fused, generic, rtol=0, atol=1e-6)


def test_payload_counts_32_bits_per_value_and_per_index():
    worker = EF21(TopK(ratio=0.01))
    worker.init(torch.zeros(1000))
    payload = worker.step(torch.randn(1000))
    assert payload.bits() == {"values": 32 * 10, "indices": 32 * 10}
    assert payload.total_bits() == 640


def test_spawn_gives_independent_memory():
    proto = EF21(TopK(k=1))
    a, b = proto.spawn(), proto.spawn()
    a.init(torch.ones(3))
    assert b.memory is None and proto.memory is None


@pytest.mark.parametrize("kwargs, message", [({}, "exactly one of"), ({"ratio": 0.0}, r"\(0, 1\]"),
                                             ({"k": 0}, "at least 1")])
def test_topk_rejects_bad_configuration(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TopK(**kwargs)


def test_topk_keeps_at_least_one_entry_and_round_trips():
    c = TopK(ratio=1e-9)
    x = torch.tensor([0.0, -3.0, 1.0])
    payload = c.compress(x)
    assert c.k_for(3) == 1 and torch.equal(c.decompress(payload), torch.tensor([0.0, -3.0, 0.0]))


def test_ef21_sgdm_compresses_the_difference_to_its_momentum():
    worker = EF21SGDM(TopK(k=2), eta=0.5)
    worker.init(torch.zeros(4))
    payload = worker.step(torch.tensor([4.0, -2.0, 1.0, 0.0]))
    # v = 0.5 * 0 + 0.5 * grad = [2, -1, 0.5, 0]; c = Top2(v - g_i) keeps 2 and -1
    assert worker.memory.v_i.tolist() == [2.0, -1.0, 0.5, 0.0]
    assert payload.parts["values"].tolist() == [2.0, -1.0]
    assert worker.memory.g_i.tolist() == [2.0, -1.0, 0.0, 0.0]


def test_ef21_sgdm_keeps_the_mean_invariant():
    workers, estimate = run_workers(EF21SGDM(TopK(ratio=0.02), eta=0.2), drifting_grads(3, 3000, 20, seed=2))
    assert torch.allclose(estimate, torch.stack([w.memory.g_i for w in workers]).mean(0), atol=1e-5)


def test_ef21_sgdm_rejects_eta_outside_the_unit_interval():
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\]"):
        EF21SGDM(TopK(k=1), eta=0.0)
