"""``register(ddp, ..., dense_when_faster=True)`` (``ddp_hooks.link_choice``): the hook measures
its step compressed and with DDP's plain allreduce, and every rank keeps the same, faster one.
The ranks' clocks are replaced by one the test advances by a cost per iteration that depends on
how the iteration went (compressed rounds counted by the hook's stats), so that the choice is the
test's to set, per rank."""
from __future__ import annotations

import functools
import time
import types

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import ddp_hooks
from ddp_hooks import link_choice
from ddp_hooks.launch import RankFailure, run_ranks

STEPS = 14  # warm-up 1, 5 compressed iterations (4 periods), then maybe dense until the decision (iteration 6 to 10)


def _train(rank: int, workers: int, costs: list[tuple[float, float]], kind: str = "sgd", micro: int = 1,
           **ddp_options: bool) -> dict:
    """``STEPS`` momentum-SGD steps of a 3-bucket MLP under the default hook told its SGD, where a
    compressed iteration costs ``costs[rank][0]`` seconds of the hook's clock and a dense one
    ``costs[rank][1]``; each step accumulates ``micro`` micro-batches (all but the last under
    ``ddp.no_sync()``). Returns what each iteration was, whether each dense iteration's ``.grad``
    was the mean of the ranks' gradients, the choice and the state."""
    clock = types.SimpleNamespace(t=0.0)
    link_choice.time = types.SimpleNamespace(perf_counter=lambda: clock.t)
    done, wait = link_choice.LinkChoice.done, costs[rank][2] if len(costs[rank]) > 2 else 0.0

    def slow_done(self: link_choice.LinkChoice, iteration: int) -> None:  # the warm-up round's wait: ``wait`` s
        if self.first is not None and iteration < self.first:
            while iteration not in self.ends:  # the hook thread records the backward's end (this may be a callback)
                time.sleep(0.001)
            clock.t += wait
        done(self, iteration)

    link_choice.LinkChoice.done = slow_done
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    ddp = DDP(model, bucket_cap_mb=0.005, **ddp_options)
    if kind == "adamw":
        try:
            ddp_hooks.register(ddp, optimizer=torch.optim.AdamW(ddp.parameters()), dense_when_faster=True)
        except ValueError as e:
            return {"error": str(e)}
    if kind == "adamw_found":  # the default finds the AdamW at its first round: the Adam mode, which always compresses
        state = ddp_hooks.register(ddp, dense_when_faster=True)
        opt = torch.optim.AdamW(ddp.parameters())
        for _ in range(STEPS):
            opt.zero_grad()
            nn.functional.cross_entropy(ddp(torch.randn(8, 20)), torch.randint(0, 4, (8,))).backward()
            opt.step()
        return {"link": state.link, "compressed": state.stats.compressed_rounds}
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    state = ddp_hooks.register(ddp, optimizer=opt, dense_when_faster=True)
    went, exact = [], []
    for i in range(STEPS):
        gen = torch.Generator().manual_seed(rank * 1000 + i)
        x, y = torch.randn(32, 20, generator=gen), torch.randint(0, 4, (32,), generator=gen)
        chunks = list(zip(x.chunk(micro), y.chunk(micro)))
        mean = [torch.zeros_like(p) for p in model.parameters()]
        for xc, yc in chunks:
            for m, g in zip(mean, torch.autograd.grad(nn.functional.cross_entropy(model(xc), yc),
                                                      list(model.parameters()))):
                m += g
        for g in mean:
            dist.all_reduce(g)
            g.div_(workers)
        before = state.stats.compressed_rounds
        opt.zero_grad()
        for j, (xc, yc) in enumerate(chunks):
            if j < micro - 1:
                with ddp.no_sync():
                    nn.functional.cross_entropy(ddp(xc), yc).backward()
            else:
                nn.functional.cross_entropy(ddp(xc), yc).backward()
        compressed = state.stats.compressed_rounds > before
        if not compressed:
            exact.append(all(torch.allclose(p.grad, g, rtol=1e-5, atol=1e-7) for p, g in zip(model.parameters(), mean)))
        opt.step()
        went.append("c" if compressed else "d")
        clock.t += costs[rank][0] if compressed else costs[rank][1]
    return {"went": "".join(went), "exact": exact, "dense": state.link.dense, "periods": state.link.periods,
            "control": state.stats.control.get("link_choice", 0),
            "memories": len(state.state_dict()["memory"]), "params": [p.detach().clone() for p in model.parameters()],
            "summary": state.link.summary()}


def _check_replicas(results: list[dict]) -> None:
    assert not any(isinstance(r, RankFailure) for r in results), results
    for r in results[1:]:
        assert r["went"] == results[0]["went"] and r["dense"] == results[0]["dense"]
        assert all(torch.equal(a, b) for a, b in zip(r["params"], results[0]["params"]))


@pytest.mark.parametrize("micro, ddp_options", [(1, {}), (2, {"gradient_as_bucket_view": True}),
                                                 (1, {"static_graph": True})],
                         ids=["plain", "no_sync-bucket_view", "static_graph"])
def test_dense_is_kept_where_it_is_faster_and_is_ddp_s_allreduce(micro, ddp_options):
    results = run_ranks(functools.partial(_train, micro=micro, **ddp_options), 2, [(2.0, 1.0), (2.0, 1.0)],
                        timeout=120)
    _check_replicas(results)
    first = results[0]
    # iteration 0 the warm-up (the hook's dense round), 1-5 compressed, 6-7 the probe: twice as fast is clear
    assert first["went"] == "dcccccdd" + "d" * (STEPS - 8), first["went"]
    assert first["dense"] is True and first["periods"] == pytest.approx((2.0, 1.0))
    assert first["control"] == 2 * 16, "two agreements (the warm-up's, one dense period), 16 bytes each, counted"
    assert all(first["exact"]), "a dense iteration's .grad is the mean of the ranks' gradients"
    assert first["memories"] == 0, "dense from now on: the memories are dropped"
    assert first["summary"].startswith("dense: DDP's allreduce measured faster")


def test_compression_is_kept_where_it_is_faster_and_the_ranks_agree_on_their_mean():
    # rank 0 alone would go dense (2 > 1.5); the ranks' mean is compressed 1.5 s, dense 2.75 s: not clear from
    # the warm-up (2.75 < 2.2 x 1.5), clear after one dense period
    results = run_ranks(_train, 2, [(2.0, 1.5), (1.0, 4.0)], timeout=120)
    _check_replicas(results)
    first = results[0]
    assert first["went"] == "dcccccdd" + "c" * (STEPS - 8), first["went"]
    assert first["dense"] is False and first["periods"] == pytest.approx((1.5, 2.75))
    assert len(first["exact"]) == 3 and all(first["exact"]), "the warm-up and the probe's iterations: the mean"
    assert first["memories"] > 0


def test_a_close_call_takes_more_dense_periods_before_deciding():
    results = run_ranks(_train, 2, [(1.0, 1.1, 1.0)] * 2, timeout=120)  # a warm-up wait under CLEAR steps: probed
    _check_replicas(results)
    first = results[0]
    assert first["went"] == "dccccc" + "d" * link_choice.DENSE + "d" + "c" * (STEPS - 7 - link_choice.DENSE)
    assert first["dense"] is False and first["periods"] == pytest.approx((1.0, 1.1))


def test_the_adam_mode_refuses_dense_when_faster_on_every_rank():
    results = run_ranks(_train, 2, [(1.0, 1.0)] * 2, "adamw", timeout=120)
    for r in results:
        assert "dense_when_faster" in r["error"] and "Adam mode" in r["error"]
    found = run_ranks(_train, 2, [(1.0, 1.0)] * 2, "adamw_found", timeout=120)  # found, not told: a warning
    assert all(r["link"] is None and r["compressed"] > 0 for r in found), found


def test_a_slow_link_seen_in_the_warm_up_keeps_compression_without_a_dense_iteration():
    # the warm-up round's collectives ran on for 4.0 s and 3.5 s after the ranks' backward: even the shorter is
    # more than SLOW compressed steps (1 s), so no dense probe
    results = run_ranks(_train, 2, [(1.0, 5.0, 4.0), (1.0, 5.0, 3.5)], timeout=120)
    _check_replicas(results)
    first = results[0]
    assert first["went"] == "d" + "c" * (STEPS - 1), first["went"]
    assert first["dense"] is False and first["periods"] == pytest.approx((1.0, 3.5))
    assert first["summary"].startswith("compressed, no dense iteration run")
    # a long wait on one rank only is its wait for a slower peer: the shorter one (2.0 s) decides nothing
    results = run_ranks(_train, 2, [(1.0, 5.0, 5.0), (1.0, 5.0, 2.0)], timeout=120)
    _check_replicas(results)
    assert results[0]["went"] == "dcccccdd" + "c" * (STEPS - 8), results[0]["went"]
    assert results[0]["periods"] == pytest.approx((1.0, 5.0))
