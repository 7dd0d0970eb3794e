"""The hook's per-rank state: re-bucketing from parameter slices, checkpoints, logging."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from compressors import CLAG, EF14, EF21, LAG, ThreePCv1, ThreePCv3, TopK
from compressors.mechanisms.adam_normalized import MOMENTS, AdamNormalized
from ddp_hooks import ThreePCState


def _params(*sizes: int) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(s)) for s in sizes]


def _fill(state, params, seed):
    bucket = state.new_bucket_state(params)
    g = torch.Generator().manual_seed(seed)
    numel = sum(p.numel() for p in params)
    bucket.worker.init(torch.randn(numel, generator=g))
    bucket.server = {"g": torch.randn(numel, generator=g)}
    return bucket


def test_a_rebuilt_bucket_is_assembled_from_the_slices_of_the_old_ones():
    params = _params(3, 5, 2, 4)
    state = ThreePCState(EF21(TopK(k=1)))
    first = _fill(state, params[:2], 0)
    second = _fill(state, params[2:], 1)
    joined_g = torch.cat([first.estimate, second.estimate])
    joined_gi = torch.cat([first.worker.memory.g_i, second.worker.memory.g_i])
    rebuilt = state.bucket_state([params[1], params[2], params[3], params[0]])
    order = torch.cat([torch.arange(3, 14), torch.arange(0, 3)])
    assert torch.equal(rebuilt.estimate, joined_g[order])
    assert torch.equal(rebuilt.worker.memory.g_i, joined_gi[order])
    assert len(state.buckets) == 1, "buckets whose parameters all moved are dropped"


def test_a_bucket_with_a_parameter_never_seen_needs_a_dense_round():
    params = _params(3, 5)
    state = ThreePCState(EF21(TopK(k=1)))
    _fill(state, params[:1], 0)
    assert state.bucket_state(params) is None


def test_state_dict_round_trips_across_bucket_layouts():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    params = list(model.parameters())
    state = ThreePCState(EF21(TopK(k=1)), model=model)
    old = [_fill(state, params[:2], 0), _fill(state, params[2:], 1)]
    saved = state.state_dict()
    fresh = ThreePCState(EF21(TopK(k=1)), model=model)
    fresh.load_state_dict(saved)
    merged = fresh.bucket_state(params[::-1])
    want = torch.cat([torch.cat([b.estimate for b in old]).split([p.numel() for p in params])[i]
                      for i in reversed(range(len(params)))])
    assert torch.equal(merged.estimate, want)


def test_load_state_dict_refuses_another_mechanism_and_keeps_its_state():
    model = torch.nn.Linear(3, 1)
    state = ThreePCState(EF21(TopK(k=1)), model=model)
    _fill(state, list(model.parameters()), 0)
    saved = state.state_dict()
    other = ThreePCState(EF21(TopK(k=2)), model=model)
    before = other.state_dict()
    with pytest.raises(ValueError, match="saved by EF21\\(TopK\\(k=1\\)\\)"):
        other.load_state_dict(saved)
    assert other.state_dict() == before


def test_load_state_dict_refuses_memories_of_another_size_naming_the_parameter_and_keeps_its_state():
    """A layer resized since the checkpoint (a vocabulary grown by one entry): refused at the
    load, naming the parameter, instead of a size error at every later backward."""
    saved_model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 4))
    state = ThreePCState(EF21(TopK(k=1)), model=saved_model)
    _fill(state, list(saved_model.parameters()), 0)
    saved = state.state_dict()
    grown = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 5))
    other = ThreePCState(EF21(TopK(k=1)), model=grown)
    before = other.state_dict()
    with pytest.raises(ValueError, match=r"do not fit these parameters' sizes: 1\.bias \(saved 4 entries, the "
                                         r"model's has 5\), 1\.weight \(saved 16 entries, the model's has 20\); load"):
        other.load_state_dict(saved)
    assert other.state_dict() == before


@pytest.mark.parametrize("options, message", [
    ({"log_every": -5}, r"log_every must be an int >= 0 \(0: never\), got -5"),
    ({"check_every": 1.5}, r"check_every must be an int >= 0 \(0: never\), got 1.5"),
    ({"warmup_steps": 0}, r"warmup_steps must be an int >= 1 \(DDP rebuilds its buckets"),
    ({"reproducible": "yes"}, "reproducible must be True or False, got 'yes'"),
    ({"process_group": 5}, "process_group must be a torch.distributed ProcessGroup .* got 5"),
    ({"scaler": 5}, "scaler must be the training's torch.amp.GradScaler or None, got 5"),
])
def test_bad_state_arguments_are_refused_naming_the_argument(options, message):
    with pytest.raises(ValueError, match=message):
        ThreePCState(EF21(TopK(k=1)), **options)
    assert ThreePCState(EF21(TopK(k=1)), log_every=np.int64(3)).log_every == 3


def test_a_checkpoint_of_a_compiled_model_loads_into_the_plain_one_and_back():
    """torch.compile's wrapper names parameters ``_orig_mod.<name>``: checkpoints hold the plain
    names, and a checkpoint that holds the prefixed ones (saved before) loads too."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    compiled = torch.compile(model)
    state = ThreePCState(EF21(TopK(k=1)), model=compiled)
    _fill(state, list(model.parameters()), 0)
    saved = state.state_dict()
    assert sorted(saved["memory"]) == ["0.bias", "0.weight", "1.bias", "1.weight"]
    plain = ThreePCState(EF21(TopK(k=1)), model=model)
    plain.load_state_dict(saved)
    prefixed = {**saved, "memory": {f"_orig_mod.{n}": m for n, m in saved["memory"].items()},
                "layout": [[f"_orig_mod.{n}" for n in unit] for unit in saved["layout"]]}
    again = ThreePCState(EF21(TopK(k=1)), model=model)
    again.load_state_dict(prefixed)
    clash = torch.nn.Module()  # a module named _orig_mod of its own: no name may fold into another
    clash.add_module("_orig_mod", torch.nn.Linear(2, 1))
    clash.weight = torch.nn.Parameter(torch.zeros(2))
    clash.enc_orig_mod = torch.nn.Linear(1, 1)
    names = sorted(ThreePCState(EF21(TopK(k=1)), model=clash)._names.values())
    assert names == ["_orig_mod.bias", "_orig_mod.weight", "enc_orig_mod.bias", "enc_orig_mod.weight", "weight"]
    for loaded in (plain, again):
        assert {k: {f: t.tolist() for f, t in m.items()} for k, m in loaded.state_dict()["memory"].items()} == \
            {k: {f: t.tolist() for f, t in m.items()} for k, m in saved["memory"].items()}


def test_state_dict_without_parameter_names_says_how_to_get_them():
    with pytest.raises(RuntimeError, match="model=ddp_model"):
        ThreePCState(EF21(TopK(k=1))).state_dict()


def test_statistics_are_logged_every_n_iterations(caplog):
    state = ThreePCState(EF21(TopK(k=1)), log_every=2)
    with caplog.at_level("INFO", logger="threepc"):
        for _ in range(5):
            state.end_iteration()
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 2 and "iteration 2" in logged[0] and "iteration 4" in logged[1]
    assert "fraction_of_dense" in logged[0]


@pytest.mark.parametrize("mechanism", [ThreePCv1(TopK(k=1)), ThreePCv3(CLAG(TopK(k=1)), TopK(k=1))], ids=repr)
def test_mechanisms_ddp_cannot_run_are_refused_at_registration(mechanism):
    with pytest.raises(ValueError, match="cannot run as a DDP hook"):
        ThreePCState(mechanism)


@pytest.mark.parametrize("mechanism", [LAG(zeta=1.0), CLAG(TopK(k=1), zeta=1.0)], ids=repr)
def test_lazy_mechanisms_are_accepted(mechanism):
    assert ThreePCState(mechanism).mechanism.lazy


def test_a_bucket_that_is_a_union_of_units_is_compressed_unit_by_unit():
    params = _params(3, 5, 2, 4)
    state = ThreePCState(EF21(TopK(k=1)))
    first, second = _fill(state, params[:2], 0), _fill(state, params[2:], 1)
    assert state.units(params[::-1]) == [second.params, first.params], "units in order of first appearance"
    assert state.units(params[:2]) == [first.params]
    cut = [params[1], params[2]]  # not a union of units: one new unit, assembled from slices
    assert state.units(cut) == [tuple(id(p) for p in cut)]


def test_the_layout_of_units_survives_a_checkpoint():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    params = list(model.parameters())
    state = ThreePCState(EF21(TopK(k=1)), model=model)
    _fill(state, params[:2], 0), _fill(state, params[2:], 1)
    saved = state.state_dict()
    assert saved["layout"] == [["0.weight", "0.bias"], ["1.weight", "1.bias"]]
    fresh = ThreePCState(EF21(TopK(k=1)), model=model)
    fresh.load_state_dict(saved)
    single = params[::-1]  # a fresh DDP wrapper's first bucket holds every parameter
    assert fresh.units(single) == [tuple(id(p) for p in params[2:]), tuple(id(p) for p in params[:2])]
    assert fresh.state_dict()["layout"] == saved["layout"]


@pytest.mark.parametrize("options", [{"nonfinite": "skip"}, {"check_every": -1}, {"check_every": True}], ids=str)
def test_reliability_options_are_checked(options):
    with pytest.raises(ValueError, match=next(iter(options))):
        ThreePCState(EF21(TopK(k=1)), **options)


def test_a_checkpoint_of_another_world_size_rebuilds_each_bucket_in_a_dense_round():
    """A checkpoint of 2 ranks on 1: no bucket is assembled from it (its aggregate is not these
    ranks' mean), so each bucket's first round is dense; on its own world size it assembles."""
    model = torch.nn.Linear(3, 1)
    state = ThreePCState(EF21(TopK(k=1)), model=model)
    params = list(model.parameters())
    _fill(state, params, 0)
    saved = state.state_dict()
    assert saved["world_size"] == 1
    fresh = ThreePCState(EF21(TopK(k=1)), model=model)
    fresh.load_state_dict({**saved, "world_size": 2})
    assert fresh.bucket_state(params) is None
    assert fresh.state_dict()["memory"].keys() == saved["memory"].keys(), "what was loaded stays until replaced"
    fresh.install(fresh.new_bucket_state(params, install=False))  # the dense round committed
    assert fresh.bucket_state(params) is not None
    same = ThreePCState(EF21(TopK(k=1)), model=model)
    same.load_state_dict(saved)
    assert same.bucket_state(params) is not None
    before = ThreePCState(EF21(TopK(k=1)), model=model)  # saved again before the dense round ran
    before.load_state_dict({**saved, "world_size": 2})
    again = ThreePCState(EF21(TopK(k=1)), model=model)
    again.load_state_dict(before.state_dict())
    assert again.bucket_state(params) is None, "the parameters still to rebuild were not saved"
    rewritten = ThreePCState(EF14(TopK(k=1)), model=model)  # EF14's aggregate is rewritten every round
    _fill(rewritten, params, 0)
    resumed = ThreePCState(EF14(TopK(k=1)), model=model)
    resumed.load_state_dict({**rewritten.state_dict(), "world_size": 2})
    assert resumed.bucket_state(params) is not None


def test_the_moments_of_the_adam_mode_survive_a_change_of_world_size():
    model = torch.nn.Linear(3, 1)
    params = list(model.parameters())
    mode = AdamNormalized(EF21(TopK(k=1)))
    state = ThreePCState(mode, model=model)
    _fill(state, params, 0)
    saved = {**state.state_dict(), "world_size": 2}
    fresh = ThreePCState(mode.spawn(), model=model)
    fresh.load_state_dict(saved)
    assert fresh.bucket_state(params) is None
    dense = fresh.new_bucket_state(params, install=False)
    for name in MOMENTS:
        loaded = torch.cat([saved["memory"][n][name] for n in ("weight", "bias")])
        assert torch.equal(getattr(dense.worker.memory, name), loaded), name


def test_checkpoints_hold_memories_row_major_whatever_the_parameters_memory_format():
    """DDP lays a channels_last parameter's gradient out in that order, and so are the hook's
    memories: a checkpoint holds them row-major, so that it loads into a model of either format
    (a review found a channels_last checkpoint scrambled in a contiguous model)."""
    last = torch.nn.Conv2d(3, 4, 2).to(memory_format=torch.channels_last)
    plain, again = torch.nn.Conv2d(3, 4, 2), torch.nn.Conv2d(3, 4, 2).to(memory_format=torch.channels_last)
    w = last.weight
    assert not w.is_contiguous()
    row_major = torch.arange(w.numel(), dtype=torch.float32)
    in_bucket = torch.empty_strided(w.shape, w.stride())
    in_bucket.copy_(row_major.view(w.shape))
    in_bucket = in_bucket.as_strided((w.numel(),), (1,))  # the weight as DDP's bucket holds it
    assert not torch.equal(in_bucket, row_major)
    state = ThreePCState(EF21(TopK(k=1)))
    state.bind(last)
    bucket = state.new_bucket_state([w, last.bias])
    bucket.worker.init(torch.cat([in_bucket, torch.zeros(4)]))
    bucket.server = {"g": torch.cat([in_bucket, torch.zeros(4)])}
    saved = state.state_dict()
    assert all(torch.equal(t, row_major) for t in saved["memory"]["weight"].values())
    for model, expected in ((plain, row_major), (again, in_bucket)):
        fresh = ThreePCState(EF21(TopK(k=1)))
        fresh.bind(model)
        fresh.load_state_dict(saved)
        assert all(torch.equal(t, expected) for t in fresh.parameter_memory()[id(model.weight)].values())
        assert all(torch.equal(t, row_major) for t in fresh.state_dict()["memory"]["weight"].values())
