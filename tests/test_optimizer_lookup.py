"""``register(ddp)`` without ``optimizer=`` looks for the optimizer (``ddp_hooks.optimizer_lookup``):
an Adam or AdamW, or a heavy-ball momentum SGD, built before or after ``register`` gives the run
``register(ddp, optimizer=opt)`` gives, bit for bit (a resume too); what the Adam mode cannot take
is warned about and left untold; another SGD is left untold silently."""
from __future__ import annotations

import gc
import logging
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.optim.optimizer as optimizer_module
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import ddp_hooks
from compressors import EF14, MomentumCorrectedEF14
from compressors.mechanisms.adam_normalized import AdamNormalized
from ddp_hooks.launch import run_ranks
from ddp_hooks.optimizer_lookup import holding, lookup

STEPS = 6


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))


def _adam(model: nn.Module) -> torch.optim.Optimizer | None:
    return lookup(model).optimizer


def test_the_lookup_finds_the_one_adam_and_warns_when_the_mode_cannot_take_it(caplog):
    model, other = _model(), nn.Linear(3, 3)
    assert lookup(model) == (None, False, None), "no optimizer yet"
    foreign = torch.optim.AdamW(other.parameters())  # another model's: not looked at
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for plain in (dict(), dict(momentum=0.9, nesterov=True), dict(momentum=0.9, dampening=0.1)):
            sgd = torch.optim.SGD(model.parameters(), lr=0.1, **plain)
            assert lookup(model) == (None, True, sgd), f"SGD {plain}: the plain default at its rate, silently"
            del sgd
        sub = type("Lars", (torch.optim.SGD,), {})(model.parameters(), lr=0.1, momentum=0.9)
        assert lookup(model) == (None, True, sub), "a subclass of SGD: its step may read .grad otherwise"
        del sub
        sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        assert lookup(model) == (sgd, True, None), "a heavy-ball SGD: momentum correction"
        del sgd
    sgd = torch.optim.SGD(model[0].parameters(), lr=0.1, momentum=0.9)
    with pytest.warns(RuntimeWarning, match="found a momentum SGD .* cannot correct its momentum, .* raw gradients .*"
                                            "trainable parameters the optimizer does not hold .* optimizer=None"):
        assert lookup(model) == (None, True, sgd), "a momentum SGD that does not step every parameter: not told"
    head = torch.optim.SGD(model[2].parameters(), lr=0.01, momentum=0.9)
    with pytest.warns(RuntimeWarning, match=r"cannot correct its momentum.* 2 optimizers hold .* a param group per"):
        assert lookup(model) == (None, True, None)
    del sgd, head
    adamw = torch.optim.AdamW(model.parameters())
    assert _adam(model) is adamw
    second = torch.optim.Adam(model[0].parameters())
    with pytest.warns(RuntimeWarning, match="2 optimizers hold the model's parameters .* or optimizer=None"):
        assert lookup(model) == (None, True, None)
    del second
    cycle = torch.optim.AdamW(model.parameters())
    cycle.me = cycle  # dropped in a reference cycle: collected before the look
    del cycle
    assert _adam(model) is adamw
    del adamw
    coupled = torch.optim.Adam(model.parameters(), weight_decay=0.1)
    with pytest.warns(RuntimeWarning, match="weight decay decoupled"):
        assert lookup(model) == (None, True, None)
    assert [h.optimizer for h in holding(model)] == [coupled] and [h.optimizer for h in holding(other)] == [foreign]
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="threepc"):
        warnings.simplefilter("error")  # a warning the lookup raises would stop one rank before a collective
        assert lookup(model) == (None, True, None)
    assert "weight decay decoupled" in caplog.text, "logged instead"


class _Wrapper(torch.optim.Optimizer):
    """As Accelerate's ``AcceleratedOptimizer``: the optimizer in ``.optimizer``, its param_groups."""

    def __init__(self, optimizer: torch.optim.Optimizer, restores_step: bool = False) -> None:
        self.optimizer = optimizer
        if restores_step:  # as with a GradScaler: it puts its step method back after every step
            self._optimizer_original_step_method = optimizer.step

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups


def test_a_wrapped_optimizer_is_found_as_the_optimizer_inside_and_a_wrapper_that_undoes_the_mode_is_named():
    model, other = _model(), nn.Linear(3, 3)
    adamw = torch.optim.AdamW(model.parameters())
    wrapper = _Wrapper(adamw)
    assert [h.optimizer for h in holding(model)] == [adamw] and _adam(model) is adamw
    scaled = _Wrapper(torch.optim.SGD(other.parameters(), lr=0.1), restores_step=True)  # another model's
    assert _adam(model) is adamw
    del wrapper
    undoing = _Wrapper(adamw, restores_step=True)
    with pytest.warns(RuntimeWarning, match="puts back the step method"):
        assert lookup(model) == (None, True, None)
    del undoing, scaled


def _optimizer(kind: str, params) -> torch.optim.Optimizer:  # noqa: ANN001 - the model's parameters
    if kind == "sgd":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3)
    return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)


def _train(rank: int, workers: int, order: str, steps: int, save: str | None, load: str | None, kind: str = "adamw"
           ) -> tuple[torch.Tensor, bool]:
    """``steps`` AdamW (``kind`` "sgd": momentum SGD) steps of a 3-bucket MLP, the hook registered
    in ``order``; ``save``/``load``: a checkpoint prefix to write after / resume from before (each
    rank its own file). Returns the parameters and whether the hook follows the optimizer."""
    model = _model()
    if load:
        ckpt = torch.load(f"{load}.{rank}.pt", weights_only=False)
        model.load_state_dict(ckpt["model"])
    ddp = DDP(model, bucket_cap_mb=0.005)
    if order == "told":
        opt = _optimizer(kind, ddp.parameters())
        state = ddp_hooks.register(ddp, optimizer=opt)
    elif order == "before":
        opt = _optimizer(kind, ddp.parameters())
        state = ddp_hooks.register(ddp)
    else:  # "after" and "untold": the optimizer built after register
        state = ddp_hooks.register(ddp, optimizer=None) if order == "untold" else ddp_hooks.register(ddp)
        opt = _optimizer(kind, ddp.parameters())
    if load:
        opt.load_state_dict(ckpt["opt"])
        state.load_state_dict(ckpt["hook"])
    for _ in range(steps):
        gen = torch.Generator().manual_seed(rank * 1000 + state.iteration)  # the same batches when resumed
        x, y = torch.randn(32, 20, generator=gen), torch.randint(0, 4, (32,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        nn.utils.clip_grad_norm_(ddp.parameters(), 0.5)  # the mode follows it: its state rides in opt's checkpoint
        opt.step()
    if save:
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "hook": state.state_dict()},
                   f"{save}.{rank}.pt")
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    everyone = [torch.empty_like(flat) for _ in range(workers)]
    dist.all_gather(everyone, flat)
    assert all(torch.equal(flat, f) for f in everyone), "replicas differ"
    return flat, isinstance(state.mechanism, (AdamNormalized, MomentumCorrectedEF14))


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_register_without_optimizer_follows_an_adamw_or_a_momentum_sgd_built_before_or_after_it(kind):
    told, before, after, untold = (run_ranks(_train, 2, order, STEPS, None, None, kind, timeout=120)[0]
                                   for order in ("told", "before", "after", "untold"))
    assert told[1] and before[1] and after[1] and not untold[1]
    assert torch.equal(before[0], told[0]) and torch.equal(after[0], told[0])
    assert not torch.equal(untold[0], told[0]), "optimizer=None: raw gradients, the SGD default's compressor"


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_a_resume_with_the_optimizer_built_after_register_is_bit_for_bit(tmp_path: Path, kind):
    whole = run_ranks(_train, 2, "after", STEPS, None, None, kind, timeout=120)[0]
    run_ranks(_train, 2, "after", STEPS // 2, str(tmp_path / "ckpt"), None, kind, timeout=120)
    resumed = run_ranks(_train, 2, "after", STEPS - STEPS // 2, None, str(tmp_path / "ckpt"), kind, timeout=120)[0]
    assert resumed[1] and torch.equal(resumed[0], whole[0])


@pytest.mark.parametrize("inner", [torch.optim.AdamW, torch.optim.SGD])
def test_a_zero_redundancy_optimizer_is_named_found_or_told_and_the_hook_compresses_raw_gradients(one_rank, inner):
    """ZeRO stage 1 shards the optimizer: each rank's inner optimizer steps a share of the model,
    so neither mode can be told it; found, it is warned about (not followed silently, or as "2
    optimizers" with advice that cannot be taken), told, it raises naming optimizer=None."""
    with warnings.catch_warnings():  # importing it scripts torch's functional optimizers: DeprecationWarnings
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.distributed.optim import ZeroRedundancyOptimizer
    ddp = DDP(_model())
    zero = ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=inner, lr=0.01,
                                   **({"momentum": 0.9} if inner is torch.optim.SGD else {}))
    with pytest.raises(ValueError, match="ZeroRedundancyOptimizer shards the optimizer .* Pass optimizer=None"):
        ddp_hooks.register(ddp, optimizer=zero)
    state = ddp_hooks.register(ddp)
    with pytest.warns(RuntimeWarning, match=f"found an? {'AdamW' if inner is torch.optim.AdamW else 'momentum SGD'} "
                                            f".* raw gradients .*ZeroRedundancyOptimizer shards the optimizer"):
        _backward(ddp)
    zero.step()
    assert type(state.mechanism) is EF14
    if inner is torch.optim.SGD:  # with options, the plain hook: nothing to correct, nothing to say
        chosen = ddp_hooks.register(fresh := DDP(_model()), ratio=0.05)
        held = ZeroRedundancyOptimizer(fresh.parameters(), optimizer_class=inner, lr=0.01, momentum=0.9)  # noqa: F841
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            _backward(fresh)
        assert not [str(w.message) for w in seen if "threepc" in str(w.message)] and type(chosen.mechanism) is EF14


def test_an_optimizer_that_is_not_one_raises(one_rank):
    with pytest.raises(ValueError, match="optimizer= takes the training's optimizer, None or 'auto'"):
        ddp_hooks.register(DDP(_model()), optimizer="adamw")


def _backward(ddp: DDP) -> None:
    nn.functional.cross_entropy(ddp(torch.randn(8, 20)), torch.randint(0, 4, (8,))).backward()


def test_the_look_waits_for_the_first_round_and_an_earlier_runs_optimizer_still_alive_is_not_followed(one_rank):
    """A second stage: the first stage's AdamW is still referenced when the model is wrapped
    again and registered before its new AdamW is built; following the old one would leave the
    new one stepping plain AdamW on normalised directions."""
    model = _model()
    stage1 = torch.optim.AdamW(model.parameters())
    ddp = DDP(model)
    state = ddp_hooks.register(ddp)
    stage2 = torch.optim.AdamW(ddp.parameters())
    with pytest.warns(RuntimeWarning, match="2 optimizers hold the model's parameters"):
        _backward(ddp)
    assert not isinstance(state.mechanism, AdamNormalized)
    del stage1, stage2


def test_a_state_dict_before_the_optimizer_exists_leaves_the_look_to_the_first_round(one_rank, caplog):
    ddp = DDP(_model())
    state = ddp_hooks.register(ddp)
    state.state_dict()
    opt = torch.optim.AdamW(ddp.parameters())
    with caplog.at_level(logging.INFO, logger="threepc"):
        _backward(ddp)
    assert isinstance(state.mechanism, AdamNormalized)
    assert "register(ddp) found AdamW: its Adam mode, AdamNormalized(EF14(ScaledSign" in caplog.text
    _backward(ddp)  # a second synchronised backward before the step
    with pytest.raises(RuntimeError, match=r"follows 2 synchronised .*register\(ddp\) found this optimizer"):
        opt.step()


class _Bag(nn.Module):
    """fastText's classifier: nearly every entry an embedding row."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.head = nn.EmbeddingBag(500, 16), nn.Linear(16, 4)

    def forward(self, grams: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(grams))


@pytest.mark.parametrize("told", [False, True])
def test_the_default_declines_the_adam_mode_for_a_model_of_embeddings_and_a_name_takes_it(one_rank, told, caplog):
    """Raw gradients and torch's own AdamW step (``registry.EMBEDDED``); the mode by name."""
    ddp = DDP(_Bag())
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-2)
    assert ddp_hooks.registry.embedding_share(ddp.module) == 8000 / 8068
    assert ddp_hooks.registry.embedding_share(ddp.module, {"embed.weight"}) == 0.0, "left out of DDP: not counted"
    with caplog.at_level(logging.INFO, logger="threepc"):
        state = ddp_hooks.register(ddp, optimizer=opt) if told else ddp_hooks.register(ddp)
        nn.functional.cross_entropy(ddp(torch.randint(0, 500, (8, 6))), torch.randint(0, 4, (8,))).backward()
    assert type(state.mechanism) is EF14 and state.mechanism.compressor.ratio == 0.05
    assert "embeddings hold 99% of the model's parameters: register(ddp) compresses raw gradients" in caplog.text
    opt.step()
    assert "step" not in vars(opt) and opt.state[ddp.module.head.weight]["step"] == 1, "torch's AdamW stepped"
    other = DDP(_Bag())
    named = ddp_hooks.register(other, "ef14", optimizer=torch.optim.AdamW(other.parameters()), compressor="sign",
                               fraction=0.84)
    assert isinstance(named.mechanism, AdamNormalized)
    tied = _Bag()
    tied.head = nn.Linear(16, 500)
    tied.head.weight = tied.embed.weight  # a read-out's gradient reaches every row: not counted (GPT-2's tying)
    assert ddp_hooks.registry.embedding_share(tied) == 0.0
    tied_state = ddp_hooks.register(DDP(tied), optimizer=torch.optim.AdamW(tied.parameters()))
    assert isinstance(tied_state.mechanism, AdamNormalized)


def test_a_found_momentum_sgd_is_corrected_and_its_step_errors_name_the_way_back(one_rank):
    ddp = DDP(_model())
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    state = ddp_hooks.register(ddp)
    _backward(ddp)
    assert isinstance(state.mechanism, MomentumCorrectedEF14) and state.mechanism.kept == 1.0
    _backward(ddp)  # a second synchronised backward before the step
    with pytest.raises(RuntimeError, match=r"follows 2 synchronised .*corrects the momentum .*optimizer=None"):
        opt.step()


@pytest.mark.parametrize("told", [False, True])
def test_the_plain_sgd_default_carries_its_error_at_a_nesterov_or_plain_sgds_rate(one_rank, told):
    for settings in (dict(momentum=0.9, nesterov=True), {}):
        ddp = DDP(_model(), bucket_cap_mb=0.001)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1, **settings)
        state = ddp_hooks.register(ddp, optimizer=opt) if told else ddp_hooks.register(ddp)
        _backward(ddp)
        opt.step()
        assert type(state.mechanism) is EF14 and state.mechanism.rate() == 0.1, settings
        for group in opt.param_groups:
            group["lr"] = 0.025
        opt.zero_grad()
        _backward(ddp)
        assert len(state.buckets) > 1 and all(b.worker.last_rate == 0.025 for b in state.buckets)
        assert state.state_dict()["rate"] == 0.025
    untold = ddp_hooks.register(DDP(_model()), optimizer=None)
    chosen = ddp_hooks.register(DDP(_model()), ratio=0.05, optimizer=torch.optim.SGD(_model().parameters(), lr=0.1))
    assert untold.mechanism.rate is None and chosen.mechanism.rate is None, "untold, or options given: constant"


def test_a_checkpoint_of_either_sgd_default_loaded_into_the_other_names_the_fix(one_rank):
    ddp = DDP(_model())
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    corrected = ddp_hooks.register(ddp)
    _backward(ddp)
    opt.step()
    plain = ddp_hooks.register(DDP(_model()), optimizer=None)
    with pytest.raises(ValueError, match="build the optimizer before loading the hook's state"):
        ddp_hooks.register(DDP(_model())).load_state_dict(corrected.state_dict())  # no SGD holds this model yet
    fresh = DDP(_model())
    held = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)  # noqa: F841 - found by the lookup
    with pytest.raises(ValueError, match=r"plain EF14 default resumes with register\(ddp, optimizer=None\)"):
        ddp_hooks.register(fresh).load_state_dict(plain.state_dict())


def test_an_adamw_built_after_the_first_backward_is_warned_about_at_the_next_round(one_rank):
    """The mechanism is chosen at the first round: an AdamW built after it leaves the default on raw
    gradients, which the next round says once, naming the fix (a user's sanity backward first)."""
    ddp = DDP(_model())
    state = ddp_hooks.register(ddp)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _backward(ddp)  # no optimizer yet: nothing to say
    opt = torch.optim.AdamW(ddp.parameters())
    with pytest.warns(RuntimeWarning, match=r"found an AdamW only after the first backward, .* before the first "
                                            r"backward, or pass it: register\(ddp, optimizer=opt\)"):
        _backward(ddp)
    opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _backward(ddp)  # said once
    assert not isinstance(state.mechanism, AdamNormalized) and state.deferred is None


@pytest.mark.parametrize("build, said", [
    (lambda ps: torch.optim.AdamW(ps), r"found an AdamW only at its first step, .*compresses raw gradients"),
    (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), r"found a momentum SGD only at its first step, .*does not "
                                                           r"correct its momentum"),
    (lambda ps: torch.optim.SGD(ps, lr=0.1), None),  # what the default would have done anyway: nothing to say
])
def test_an_optimizer_built_after_the_second_backward_is_warned_about_at_its_first_step(one_rank, build, said):
    """No optimizer by the second round: the first step of one that holds the model says, once,
    what the default would have done with it; another optimizer's steps say nothing."""
    ddp = DDP(_model())
    state = ddp_hooks.register(ddp)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            _backward(ddp)  # no optimizer yet: nothing to say
        torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1, momentum=0.9).step()  # not the model's
    opt = build(ddp.parameters())
    if said is None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            opt.step()
    else:
        with pytest.warns(RuntimeWarning, match=said):
            opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _backward(ddp)
        opt.step()  # said once
    assert state.deferred is None and not optimizer_module._global_optimizer_pre_hooks


def test_the_watch_for_a_late_optimizer_ends_with_its_model(one_rank):
    ddp = DDP(_model())
    ddp_hooks.register(ddp)
    for _ in range(2):
        _backward(ddp)
    assert len(optimizer_module._global_optimizer_pre_hooks) == 1
    del ddp
    gc.collect()
    torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1).step()  # another model's step: the watch sees it is alone
    assert not optimizer_module._global_optimizer_pre_hooks


def test_loading_an_adam_mode_checkpoint_before_the_optimizer_exists_names_the_order(one_rank):
    ddp = DDP(_model())
    opt = torch.optim.AdamW(ddp.parameters())
    saved = ddp_hooks.register(ddp, optimizer=opt)
    _backward(ddp)
    opt.step()
    checkpoint = saved.state_dict()
    fresh = DDP(_model())
    with pytest.raises(ValueError, match="build the optimizer before loading the hook's state"):
        ddp_hooks.register(fresh).load_state_dict(checkpoint)


def test_a_checkpoint_loaded_before_the_optimizer_exists_fixes_the_mechanism(one_rank):
    """A raw-gradient checkpoint (``register(ddp)`` under AdamW before it looked) loads before the
    optimizer is built; the AdamW found at the first round then changes nothing (the memories are
    the checkpoint's)."""
    ddp = DDP(_model())
    saved = ddp_hooks.register(ddp, optimizer=None)
    _backward(ddp)
    checkpoint = saved.state_dict()
    fresh = DDP(_model())
    state = ddp_hooks.register(fresh)
    state.load_state_dict(checkpoint)
    opt = torch.optim.AdamW(fresh.parameters())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _backward(fresh)
    opt.step()
    assert not [str(w.message) for w in seen if "threepc" in str(w.message)]
    assert not isinstance(state.mechanism, AdamNormalized) and state.iteration == 2


def test_an_adam_mode_state_names_optimizer_none_for_a_raw_gradient_checkpoint(one_rank):
    ddp = DDP(_model())
    saved = ddp_hooks.register(ddp, optimizer=None)
    _backward(ddp)
    fresh = DDP(_model())
    opt = torch.optim.AdamW(fresh.parameters())  # noqa: F841 - alive while the state loads
    with pytest.raises(ValueError, match=r"resumes with register\(ddp, optimizer=None\)"):
        ddp_hooks.register(fresh).load_state_dict(saved.state_dict())
