"""Every collective tensor of the hook lives on the bucket's device (NCCL refuses CPU tensors:
clag, lag, co3 and sasg once failed on NCCL with a CPU size header).

One process, a gloo group of one rank, a tiny DDP model on the CPU. The collectives are wrapped
to record every tensor they get. A CPU-only machine has no second device, so the hook runs with
torch's default device set to ``meta`` in the protocol layer (``exchange``): a tensor created
there without ``device=`` (the regression) lands on ``meta`` instead of the bucket's device and is
caught. (Only there: the mechanisms legitimately compute host-side scalars with torch.)"""

import pytest
import torch
import torch.distributed as dist
from torch import nn

import ddp_hooks
from compressors import PartSpec, Payload
from ddp_hooks import protocol

# name -> options: lazy triggers that stay silent (clag with a huge zeta; lag, as the same batch
# every step leaves nothing to upload), one that fires (sasg), a variable-length coded stream
# (co3), fixed-size payloads (ef21, ef14).
HOOKS = {
    "clag": {"ratio": 0.1, "zeta": 1e12},
    "lag": {},
    "sasg": {"ratio": 0.1},
    "co3": {},
    "co3_2s": {"fmt": "fp4-121"},  # two stages: size header, all_to_all, owner header, all_gather
    "onebit": {},  # two stages of fixed-size chunks: all_to_all, all_gather
    "ef21": {"ratio": 0.1},
    "ef14": {"ratio": 0.1},
    "gd": {},  # one part, averaged: the flags in an all_reduce of their own
}

SILENT = ("clag", "lag")


@pytest.fixture
def collectives(monkeypatch) -> list[tuple[str, torch.device, torch.dtype]]:
    """(collective, device, dtype) of every tensor the protocol hands to a collective."""
    seen: list[tuple[str, torch.device, torch.dtype]] = []

    def recording(name: str, fn):
        def run(*tensors, **kwargs):
            seen.extend((name, t.device, t.dtype) for t in tensors)
            return fn(*tensors, **kwargs)
        return run

    def under_meta(exchange):
        def run(*args, **kwargs):
            with torch.device("meta"):
                return exchange(*args, **kwargs)
        return run

    monkeypatch.setattr(dist, "all_reduce", recording("all_reduce", dist.all_reduce))
    monkeypatch.setattr(protocol, "all_gather_single", recording("all_gather", protocol.all_gather_single))
    monkeypatch.setattr(dist, "all_to_all_single", recording("all_to_all", dist.all_to_all_single))
    for cls in (protocol.Protocol, protocol.MeanAllReduce, protocol.Sized):
        monkeypatch.setattr(cls, "exchange", under_meta(cls.exchange))
    for stage in ("first", "second"):  # not the owner's step between them (mechanism code)
        monkeypatch.setattr(protocol.TwoStage, stage, under_meta(getattr(protocol.TwoStage, stage)))
    return seen


@pytest.mark.parametrize("name", HOOKS)
def test_every_collective_tensor_lives_on_the_buckets_device(one_rank_module, collectives, name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=0.001)  # several buckets
    state = ddp_hooks.register(ddp, name, **HOOKS[name])
    x, y = torch.randn(8, 16), torch.randn(8, 4)
    for _ in range(4):  # the dense warm-up round, then compressed ones
        nn.functional.mse_loss(ddp(x), y).backward()
        ddp.zero_grad()
    assert state.stats.compressed_rounds > 0
    assert collectives, "no collective ran"
    wrong = [c for c in collectives if c[1] != torch.device("cpu")]
    assert not wrong, f"collective tensors off the bucket's device: {wrong}"
    if name == "co3_2s":
        assert {"all_gather", "all_to_all"} <= {c[0] for c in collectives}
    if name in SILENT:
        assert state.stats.silent_rounds > 0, "the silent path (an empty payload, size 0) did not run"


@pytest.mark.parametrize("scratch", [True, False])
def test_a_sized_one_part_payload_is_averaged_in_place_only_when_it_is_scratch(one_rank_module, monkeypatch, scratch):
    """LAG's upload x - h is the round's own temporary (``Payload.scratch``): the averaging
    all_reduce runs on it in place; a part the payload does not mark (it may be memory) is copied."""
    reduced: list[torch.Tensor] = []
    all_reduce = dist.all_reduce
    monkeypatch.setattr(dist, "all_reduce", lambda t, **kw: reduced.append(t) or all_reduce(t, **kw))
    part = torch.arange(6, dtype=torch.float32)
    payload = Payload({"dense": part}, 6, frozenset({"dense"}) if scratch else frozenset())
    spec = [PartSpec("dense", torch.float32, 6, aligned=True)]
    sized = protocol.choose(spec, summable=True, lazy=True, reproducible=False, group=dist.group.WORLD,
                            stats=ddp_hooks.CommStats())
    exchange = sized.exchange(payload, spec, part.device, own=payload.scratch)
    exchange.future.wait()
    (mean,), flags = exchange.read()
    assert isinstance(sized, protocol.Sized) and not any(flags)
    assert torch.equal(mean.parts["dense"], torch.arange(6, dtype=torch.float32))  # one rank: the mean is itself
    assert (reduced[-1].data_ptr() == part.data_ptr()) is scratch


def test_the_decoding_waits_for_every_collective_of_a_bucket(monkeypatch):
    """On a GPU, ``Future.wait`` makes the current stream wait for a collective's CUDA events, and
    a ``.then()`` callback waited only for the future it follows: the hook's decoding waits for
    every future under the one it follows, nested ``collect_all`` results (the flags and the
    mean of an all_reduce round) included. Counted here through ``wait`` on the CPU."""
    from ddp_hooks.hook import _synchronize

    waited: list[torch._C.Future] = []
    wait = torch._C.Future.wait
    monkeypatch.setattr(torch._C.Future, "wait", lambda f: waited.append(f) or wait(f))
    done = [torch.futures.Future() for _ in range(3)]
    for f in done:
        f.set_result([torch.zeros(1)])  # a collective's value: its output tensors
    _synchronize(torch.futures.collect_all([torch.futures.collect_all(done[:2]), done[2]]))
    assert len(waited) == 5  # the bucket's, the round's pair and the three collectives
