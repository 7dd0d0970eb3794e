"""EF14 with momentum correction (``MomentumCorrectedEF14``): torch's SGD on what it leaves in the
gradients is SGD with momentum on the mean gradient when nothing is dropped, the masking, the
memory a step must not write, and the registration that reads the optimizer's momentum."""
from __future__ import annotations

import pytest
import torch

from compressors import EF14, MomentumCorrectedEF14, PackedTopK, Round, ScaledSign, TopK
from compressors.mechanisms.ef14_momentum import MOMENTUM, mean_norm2

D, WORKERS = 40, 3


def gradients(steps: int, seed: int = 0) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(D, generator=g) for _ in range(WORKERS)] for _ in range(steps)]


class Cluster:
    """WORKERS workers of ``mechanism`` and one aggregate, driven round by round as the hook does
    (a dense round at ``dense_at``: a new state, as after a resume on other ranks)."""

    def __init__(self, mechanism: MomentumCorrectedEF14) -> None:
        self.mechanism, self.workers, self.server = mechanism, [], None

    def round(self, t: int, grads: list[torch.Tensor], dense: bool) -> torch.Tensor:
        if dense or self.server is None:
            self.workers = [self.mechanism.spawn() for _ in grads]
            payloads = [w.init(g.clone(), Round(t, r, len(grads))) for r, (w, g) in enumerate(zip(self.workers, grads))]
            self.server = self.mechanism.begin(payloads, Round(t, 0, len(grads)))
        else:
            shared = dict(self.server)  # the state before the round, as the hook and the simulation pass it
            payloads = [w.step(g.clone(), Round(t, r, len(grads), shared=shared))
                        for r, (w, g) in enumerate(zip(self.workers, grads))]
            self.server = {k: torch.full_like(v, float("nan")) for k, v in self.server.items()}  # the hook's
            self.mechanism.fold(self.server, payloads, Round(t, 0, len(grads), shared=shared))  # fresh buffers
        return self.server["g"]

    def clip(self, factors: list[float]) -> None:
        """What ``ddp_hooks.sgd`` does after the step: each worker takes its rank's clipping factor."""
        for w, c in zip(self.workers, factors):
            w.clip(c)


def trajectory(directions, nesterov: bool, weight_decay: float) -> torch.Tensor:
    """torch's SGD(momentum=0.9) fed ``directions`` (a callable t -> the gradient it sees)."""
    x = torch.nn.Parameter(torch.linspace(-1.0, 1.0, D))
    opt = torch.optim.SGD([x], lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=weight_decay)
    for t in range(12):
        x.grad = directions(t).clone()
        opt.step()
    return x.detach()


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("dense_at", [(), (5,)], ids=["one-dense-round", "dense-again-at-5"])
def test_uncompressed_the_users_sgd_steps_as_sgd_with_momentum_on_the_mean_gradient(nesterov, weight_decay,
                                                                                   dense_at):
    grads = gradients(12)
    cluster = Cluster(MomentumCorrectedEF14(TopK(ratio=1.0), beta=0.9, kept=1.0))
    corrected = trajectory(lambda t: cluster.round(t, grads[t], t in dense_at), nesterov, weight_decay)
    plain = trajectory(lambda t: torch.stack(grads[t]).mean(0), nesterov, weight_decay)
    torch.testing.assert_close(corrected, plain, rtol=1e-5, atol=1e-6)
    # the comparison can fail: once C drops entries, the trajectory leaves SGD's
    dropped = Cluster(MomentumCorrectedEF14(TopK(k=4), beta=0.9, kept=1.0))
    assert not torch.allclose(trajectory(lambda t: dropped.round(t, grads[t], False), nesterov, weight_decay), plain)


def test_the_aggregate_is_the_mean_of_the_compressed_momenta_and_g_its_increment():
    grads = gradients(4, seed=1)
    mechanism = MomentumCorrectedEF14(TopK(k=5), beta=0.8, kept=1.0)
    cluster = Cluster(mechanism)
    previous = None
    for t in range(4):
        cluster.round(t, grads[t], False)
        a = cluster.server[MOMENTUM]
        if t == 0:
            torch.testing.assert_close(a, torch.stack(grads[0]).mean(0))
        else:
            torch.testing.assert_close(cluster.server["g"], a - 0.8 * previous, rtol=0, atol=1e-6)
            assert int((a != 0).sum()) <= 5 * WORKERS  # a sum of WORKERS payloads of 5 entries
        previous = a.clone()


@pytest.mark.parametrize("kept", [0.0, 0.5, 1.0])
def test_the_momentum_is_scaled_by_kept_where_the_worker_sent(kept):
    g0, g1 = torch.randn(D), torch.randn(D)
    worker = MomentumCorrectedEF14(PackedTopK(ratio=0.1), beta=0.9, kept=kept).spawn()
    worker.init(g0.clone())
    payload = worker.step(g1.clone(), Round(1))
    sent = worker.compressor.located(payload, Round(1))[1].long()
    assert torch.equal(worker.compressor.sent(payload, Round(1)), sent)
    u = torch.tensor(0.9) * g0 + g1  # u = beta u + grad, as the step rounds it (kernels.momentum_compensate)
    expected = u.clone()
    expected[sent] *= kept
    torch.testing.assert_close(worker.memory.u_i, expected, rtol=0, atol=0)
    # error feedback on the momentum: e = v - C(v) with v = 0 + u
    torch.testing.assert_close(worker.memory.e_i + worker.compressor.decompress(payload, Round(1)), u, rtol=0,
                               atol=1e-6)


def test_a_step_writes_neither_tensor_of_the_memory_it_replaces():
    """The hook keeps the memory by reference to roll a round back (``written_in_place`` is empty)."""
    worker = MomentumCorrectedEF14(TopK(k=3), beta=0.9, kept=0.5).spawn()
    worker.init(torch.randn(D))
    for t in range(1, 5):
        before = {k: (v, v.clone()) for k, v in worker.memory.tensors().items()}
        worker.step(torch.randn(D), Round(t))
        for name, (tensor, copy) in before.items():
            assert torch.equal(tensor, copy), name
            assert worker.memory.tensors()[name].data_ptr() != tensor.data_ptr(), name
    assert worker.written_in_place == frozenset()


def test_beta_is_read_each_round_from_follow():
    momentum = {"beta": 0.9}
    mechanism = MomentumCorrectedEF14(TopK(ratio=1.0), kept=1.0, follow=lambda: momentum["beta"])
    cluster = Cluster(mechanism)
    grads = gradients(3, seed=2)
    cluster.round(0, grads[0], False)
    a0 = cluster.server[MOMENTUM].clone()
    momentum["beta"] = 0.5
    g = cluster.round(1, grads[1], False)
    mean = [torch.stack(grads[t]).mean(0) for t in range(2)]
    torch.testing.assert_close(cluster.server[MOMENTUM], 0.5 * mean[0] + mean[1])
    torch.testing.assert_close(g, cluster.server[MOMENTUM] - 0.5 * a0)


def test_the_error_is_carried_into_a_round_by_the_ratio_of_the_rates():
    """v = (lr_{t-1} / lr_t) e + u': the rate read at the round before, over this round's."""
    lr = {"now": 0.1}
    worker = MomentumCorrectedEF14(TopK(k=3), beta=0.9, kept=1.0, rate=lambda: lr["now"]).spawn()
    worker.init(torch.randn(D))
    worker.step(torch.randn(D), Round(1))
    e, u = worker.memory.e_i.clone(), worker.memory.u_i.clone()
    lr["now"] = 0.025
    grad = torch.randn(D)
    payload = worker.step(grad, Round(2))
    v = worker.memory.e_i + worker.compressor.decompress(payload, Round(2))
    torch.testing.assert_close(v, (0.1 / 0.025) * e + (0.9 * u + grad), rtol=0, atol=1e-6)


def test_across_a_schedule_the_rate_weighted_error_is_what_the_rate_weighted_rounds_did_not_send():
    """EF-SGD's invariant in update units (Karimireddy et al. 2019): lr_T e_T = sum_t lr_t (u_t - p_t),
    so x - lr_T e_T is where the uncompressed momentum steps would have taken x. Without the
    rate the error is an unweighted sum and the invariant fails under the schedule."""
    rates = [0.1, 0.1, 0.08, 0.05, 0.03, 0.02, 0.012, 0.005]
    for rated in (True, False):
        t_now = {"t": 0}
        worker = MomentumCorrectedEF14(TopK(k=4), beta=0.9, kept=1.0,
                                       rate=(lambda: rates[t_now["t"]]) if rated else None).spawn()
        g = torch.Generator().manual_seed(4)
        grad = torch.randn(D, generator=g, dtype=torch.float64).float()
        worker.init(grad.clone())
        momenta = rates[0] * grad.double()
        sent = momenta.clone()  # the dense round sent u_0 = grad
        for t in range(1, len(rates)):
            t_now["t"] = t
            grad = torch.randn(D, generator=g)
            payload = worker.step(grad, Round(t))
            momenta += rates[t] * worker.memory.u_i.double()
            sent += rates[t] * worker.compressor.decompress(payload, Round(t)).double()
        held = rates[-1] * worker.memory.e_i.double()
        if rated:
            torch.testing.assert_close(sent + held, momenta, rtol=0, atol=1e-5)
        else:
            assert not torch.allclose(sent + held, momenta, rtol=0, atol=1e-3)


def test_under_a_constant_rate_the_carry_changes_no_bit():
    grads = gradients(6, seed=5)
    rated = Cluster(MomentumCorrectedEF14(PackedTopK(ratio=0.2), kept=1.0, rate=lambda: 0.05))
    plain = Cluster(MomentumCorrectedEF14(PackedTopK(ratio=0.2), kept=1.0))
    for t in range(6):
        assert torch.equal(rated.round(t, grads[t], False), plain.round(t, grads[t], False))


def test_a_rate_that_is_not_positive_carries_nothing_and_waits_for_the_next():
    lr = {"now": 0.1}
    worker = MomentumCorrectedEF14(TopK(k=3), kept=1.0, rate=lambda: lr["now"]).spawn()
    worker.init(torch.randn(D))
    assert worker.carry() == 1.0
    lr["now"] = 0.0
    assert worker.carry() == 1.0
    lr["now"] = 0.05
    assert worker.carry() == 2.0  # from the last positive rate


def test_told_its_sgd_each_round_reads_the_first_param_groups_rate():
    from ddp_hooks.registry import _told
    x = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([x], lr=0.1, momentum=0.9)
    worker = MomentumCorrectedEF14(TopK(k=1), kept=1.0)
    _told(worker, opt)
    assert worker.rate() == 0.1
    opt.param_groups[0]["lr"] = 0.05  # as a scheduler sets it
    assert worker.rate() == 0.05


def test_with_no_momentum_it_is_ef14():
    grads = gradients(5, seed=3)
    corrected, plain = Cluster(MomentumCorrectedEF14(TopK(k=4), beta=0.0, kept=0.3)), Cluster(EF14(TopK(k=4)))
    for t in range(5):
        torch.testing.assert_close(corrected.round(t, grads[t], False), plain.round(t, grads[t], False), rtol=0, atol=0)


def test_the_aggregate_needs_the_state_before_the_round():
    mechanism = MomentumCorrectedEF14(TopK(k=2))
    worker = mechanism.spawn()
    server = mechanism.begin([worker.init(torch.randn(D))])
    with pytest.raises(ValueError, match="rnd.shared"):
        mechanism.fold(server, [worker.step(torch.randn(D), Round(1))], Round(1))


def test_bad_settings_name_the_problem():
    with pytest.raises(ValueError, match="sparsifier"):
        MomentumCorrectedEF14(ScaledSign())
    with pytest.raises(ValueError, match="kept"):
        MomentumCorrectedEF14(TopK(k=2), kept=1.5)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        MomentumCorrectedEF14(TopK(k=2), beta=1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        MomentumCorrectedEF14(TopK(k=2), follow=lambda: 1.2).beta


# -- following the user's gradient clipping (ddp_hooks.sgd) -----------------------------------
@pytest.mark.parametrize("kept", [1.0, 0.7])
def test_clip_leaves_the_memory_as_if_the_round_had_taken_the_clipped_gradient(kept):
    """After each round and its clip(c_t), with the payloads p_t that were sent and the masks m_t of
    their entries: u = m_t (beta u + c_t g_t) and e = e + beta u_prev + c_t g_t - p_t."""
    mechanism = MomentumCorrectedEF14(TopK(k=6), beta=0.9, kept=kept, clipping=True)
    worker, u, e = mechanism.spawn(), torch.zeros(D), torch.zeros(D)
    g = torch.Generator().manual_seed(3)
    for t in range(8):
        grad, c = torch.randn(D, generator=g), float(torch.rand((), generator=g)) * 0.9 + 0.05
        rnd = Round(t, 0, 1)
        payload = worker.init(grad.clone(), rnd) if t == 0 else worker.step(grad.clone(), rnd)
        sent = torch.ones(D, dtype=torch.bool)
        if t > 0:
            sent = torch.zeros(D, dtype=torch.bool)
            sent[mechanism.compressor.sent(payload, rnd).long()] = True
        sent_values = grad if t == 0 else mechanism.compressor.decompress(payload, rnd)  # a dense round: grad
        worker.clip(c)
        v = 0.9 * u + c * grad
        e, u = e + v - sent_values.reshape(-1), torch.where(sent & (t > 0), kept * v, v)
        torch.testing.assert_close(worker.memory.u_i, u, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(worker.memory.e_i, e, rtol=1e-5, atol=1e-6)
        assert worker.gain == c  # the next round takes c grad
    worker.clip(0.5)  # once per round: a second clip changes nothing
    torch.testing.assert_close(worker.memory.u_i, u, rtol=1e-5, atol=1e-6)
    before = worker.memory
    worker.step(torch.full((D,), float("nan")), Round(8, 0, 1))
    worker.memory = before  # the hook's rollback of a round flagged non-finite
    worker.clip(0.5)  # the round's gradient is not taken into the memory it did not write
    assert bool(worker.memory.u_i.isfinite().all()) and bool(worker.memory.e_i.isfinite().all())


def test_a_round_after_a_clipping_to_zero_is_corrected_from_its_own_copy_of_the_gradient():
    """gain 0: u' = beta u holds no grad_i to read back, so the round keeps a copy; clip(c) then
    leaves u = beta u + c grad and e = e + beta u + c grad - p, as for any other gain."""
    worker = MomentumCorrectedEF14(TopK(k=6), beta=0.9, kept=1.0, clipping=True).spawn()
    g = torch.Generator().manual_seed(5)
    g0, g1 = torch.randn(D, generator=g), torch.randn(D, generator=g)
    worker.init(g0.clone(), Round(0, 0, 1))
    worker.clip(0.0)  # the dense round taken at 0: u = 0, and e = -g0 gives back what it sent
    u, e = worker.memory.u_i.clone(), worker.memory.e_i.clone()
    payload = worker.step(g1.clone(), Round(1, 0, 1))
    worker.clip(0.5)
    v = 0.9 * u + 0.5 * g1
    sent = worker.compressor.decompress(payload, Round(1, 0, 1)).reshape(-1)
    torch.testing.assert_close(worker.memory.u_i, v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(worker.memory.e_i, e + v - sent, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("nesterov", [False, True])
def test_uncompressed_a_constant_clipping_is_sgd_with_momentum_on_the_clipped_mean_gradient(nesterov):
    """Each rank clips by its own c_i: the first round sends grad_i unclipped and the next takes
    the excess back, so from the second step on the position is SGD's on mean_i c_i grad_i."""
    grads, factors = gradients(12, seed=2), [0.3, 0.6, 1.0]
    cluster = Cluster(MomentumCorrectedEF14(TopK(ratio=1.0), beta=0.9, kept=1.0, clipping=True))

    def clipped_round(t: int) -> torch.Tensor:
        g = cluster.round(t, grads[t], False).clone()
        cluster.clip(factors)
        return g

    corrected = trajectory(clipped_round, nesterov, 0.0)
    plain = trajectory(lambda t: torch.stack([c * g for c, g in zip(factors, grads[t])]).mean(0), nesterov, 0.0)
    torch.testing.assert_close(corrected, plain, rtol=1e-5, atol=1e-6)
    unclipped = trajectory(lambda t: torch.stack(grads[t]).mean(0), nesterov, 0.0)
    assert not torch.allclose(corrected, unclipped, atol=1e-3)


def estimate(grad: torch.Tensor, u: torch.Tensor, beta: float, gain: float, workers: int) -> float:
    """mean_norm2 of the sums the round reads (``kernels.momentum_compensate``)."""
    return mean_norm2(float(grad @ grad), float(u @ grad), beta, gain, workers)


def test_the_norm_shown_estimates_the_mean_gradients():
    """mean_norm2 with noise orthogonal to the mean: ||mu||^2 + ||noise||^2 / n, the momentum u
    of earlier rounds (times gain) telling the mean; one worker: ||grad||^2; no signal: 1/n."""
    mu, noise = torch.zeros(D), torch.zeros(D)
    mu[:10], noise[10:] = 1.0, 2.0
    grad, beta, gain = mu + noise, 0.9, 0.5
    u = gain * mu / (1.0 - beta)
    assert estimate(grad, u, beta, gain, 4) == pytest.approx(10.0 + 120.0 / 4)
    assert estimate(grad, u, beta, gain, 1) == pytest.approx(130.0)
    assert estimate(grad, torch.zeros(D), beta, gain, 4) == pytest.approx(130.0 / 4)
    assert estimate(grad, -u, beta, gain, 4) == pytest.approx(130.0 / 4)  # clamped at no signal
    assert estimate(grad, 100 * u, beta, gain, 4) == pytest.approx(130.0)  # at most all of it


def test_presented_rescales_to_the_estimate_and_shows_a_dense_round_as_it_is():
    mechanism = MomentumCorrectedEF14(TopK(k=4), beta=0.9, clipping=True)
    worker, grad = mechanism.spawn(), torch.arange(float(D))
    worker.init(grad.clone(), Round(0, 0, 2))
    aggregate = 3.0 * grad
    assert worker.presented(aggregate) == 1.0 and worker.shown == 1.0  # a dense round's g is the mean gradient
    worker.step(grad.clone(), Round(1, 0, 2))
    expected = estimate(grad, grad, 0.9, 1.0, 2) ** 0.5 / float(aggregate.norm())
    assert worker.presented(aggregate) == pytest.approx(expected) and worker.shown == pytest.approx(expected)
    plain = MomentumCorrectedEF14(TopK(k=4), beta=0.9).spawn()
    plain.init(grad.clone(), Round(0, 0, 2))
    plain.step(grad.clone(), Round(1, 0, 2))
    assert plain.presented(aggregate) == 1.0 and plain.shown is None  # not told to follow clipping
