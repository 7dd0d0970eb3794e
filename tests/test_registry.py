"""The one registry: every entry builds, options are checked with messages that give the valid
range, and every mechanism x compressor pair it can build combines as it declares."""
from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

import ddp_hooks
from compressors import Payload, Round
from compressors.mechanisms.registry import REGISTRY, UNSIZED, build, describe, names
from ddp_hooks import wire

D, N = 300, 3


def pairs():
    """(name, options) for every DDP entry and every choice of its compressor options."""
    for name in names(ddp=True):
        slots = [o for o in REGISTRY[name].options if o.choices and o.name in ("compressor", "q")]
        for values in itertools.product(*[o.choices for o in slots]):
            yield name, {o.name: v for o, v in zip(slots, values)}


PAIRS = list(pairs())


def test_every_entry_builds_with_its_defaults_and_is_described():
    text = describe()
    for name, entry in REGISTRY.items():
        assert repr(entry()) and f"  {name}" in text
        for option in entry.options:
            assert option.name in text


@pytest.mark.parametrize("options, message", [
    ({"ratio": "0.1"}, r"ratio='0.1' \(str\) is invalid; ratio must be float in \(0, 1\]"),
    ({"ratio": 0.0}, r"ratio must be float in \(0, 1\]"),
    ({"ratio": 0.1, "k": 5}, "ratio= .* or k= .*, not both"),
    ({"k": 2.5}, r"k must be int in \[1, inf\)"),
    ({"k": True}, "k=True"),
    ({"compressor": "topq"}, "compressor must be one of 'topk', 'topk8', 'randk', 'randk_shared'"),
    ({"momentum": 0.9}, r"does not take option\(s\) \['momentum'\]"),
    ({"compressor": "sign", "ratio": 0.05}, "compressor='sign' sends a sign per entry and takes no ratio= or k="),
    ({"compressor": "sign", "k": 5}, "takes no ratio= or k=; drop them"),
])
def test_bad_options_are_refused_with_the_valid_range(options, message):
    with pytest.raises(ValueError, match=message):
        build("ef21", **options)


def test_numpy_numbers_are_options_like_python_ones():
    """Options read from a config (numpy scalars): np.int64 is an int, np.float64 a float."""
    assert repr(build("ef21", k=np.int64(5))) == repr(build("ef21", k=5))
    assert repr(build("ef21", ratio=np.float64(0.1))) == repr(build("ef21", ratio=0.1))
    with pytest.raises(ValueError, match=r"k must be int in \[1, inf\)"):
        build("ef21", k=np.float64(5.0))


@pytest.mark.parametrize("options, message", [
    ({"fraction": 0.9}, "fraction=0.9 .* needs compressor='sign', got compressor='topk'"),
    ({"compressor": "sign", "fraction": 0.4}, r"fraction must be float in \[0.5, 1\]"),
    ({"compressor": "sign", "fraction": 0.9, "ratio": 0.1}, "takes no ratio= or k=; drop them"),
])
def test_a_sign_window_needs_signs_and_at_least_half_the_entries(options, message):
    with pytest.raises(ValueError, match=message):
        build("ef14", **options)
    assert repr(build("ef14", compressor="sign", fraction=0.84)) == "EF14(ScaledSign(block=2048, fraction=0.84))"


def test_unknown_and_simulation_only_names_are_refused_by_the_hook_registry():
    with pytest.raises(ValueError, match=r"mechanism 'ef22' \(did you mean 'ef21'\?\); known: gd, ef14"):
        build("ef22")
    with pytest.raises(ValueError, match="simulation only"):
        ddp_hooks.mechanism("3pcv1")
    assert "3pcv1" not in ddp_hooks.MECHANISMS and set(ddp_hooks.MECHANISMS) == set(names(ddp=True))


def test_registering_on_a_model_that_is_not_the_ddp_wrapper_names_the_fix():
    with pytest.raises(TypeError, match="needs the DistributedDataParallel wrapper, got Linear.*Accelerator"):
        ddp_hooks.register(torch.nn.Linear(2, 1))


def test_a_misspelled_name_or_option_is_answered_with_the_close_one():
    with pytest.raises(ValueError, match=r"unknown threepc mechanism 'ef2l' \(did you mean 'ef21'\?\)"):
        build("ef2l")
    with pytest.raises(ValueError, match=r"\['ratoi'\] \(did you mean 'ratio'\?\); its options: ratio, k"):
        build("ef21", ratoi=0.1)
    with pytest.raises(ValueError, match=r"\['zzz'\]; its options"):
        build("ef21", zzz=1)


def test_register_names_its_own_keywords_a_second_hook_and_takes_a_compiled_wrapper(one_rank, caplog):
    ddp = DDP(torch.nn.Linear(4, 2))
    for typo, meant in (("optimiser", "optimizer="), ("warmup", "warmup_steps="), ("nonfinit", "nonfinite=")):
        with pytest.raises(ValueError, match=f"register got \\['{typo}'\\]: did you mean {meant}\\? register's own"):
            ddp_hooks.register(ddp, **{typo: 1})
    state = ddp_hooks.register(torch.compile(ddp), "ef21", ratio=0.1)  # compiled after wrapping, before registering
    assert repr(state.mechanism) == "EF21(TopK(ratio=0.1))"
    assert "register on a world of 1 rank: nothing crosses a link" in caplog.text
    with pytest.raises(RuntimeError, match="already has a comm hook .* Keep the state the first register"):
        ddp_hooks.register(ddp)


def _mean_payload(payloads: list[Payload], spec, numel: int) -> Payload:
    """What the averaging all_reduce delivers: the mean of the packed payloads (a silent worker
    adds zeros)."""
    packed = [wire.pack(p, spec).view(torch.float32) if p.parts else None for p in payloads]
    width = max(t.numel() for t in packed if t is not None)
    total = sum(t if t is not None else torch.zeros(width) for t in packed) / len(payloads)
    return wire.unpack(total.view(torch.uint8), spec, numel)


@pytest.mark.parametrize("name, options", PAIRS, ids=[f"{n}-{'-'.join(o.values()) or 'default'}" for n, o in PAIRS])
def test_a_summable_declaration_means_the_mean_payload_gives_the_same_aggregate(name, options):
    """Every pair the registry builds: where the mechanism declares its payload summable, the
    aggregate of the mean payload equals the aggregate of the n payloads (the hook then uses
    one averaging all_reduce); mechanisms whose aggregate keeps per-worker state never declare it."""
    wanted = {"ratio": 0.05, "seed": 3, "p": 0.5, **options}
    if options.get("compressor") in UNSIZED:
        del wanted["ratio"]
    mechanism = build(name, **{k: v for k, v in wanted.items() if any(o.name == k for o in REGISTRY[name].options)})
    gen = torch.Generator().manual_seed(0)
    workers = [mechanism.spawn() for _ in range(N)]
    grads = [torch.randn(D, generator=gen) for _ in range(N)]
    server = mechanism.begin([w.init(g, Round(0, i, N)) for i, (w, g) in enumerate(zip(workers, grads))])
    checked = 0
    for t in range(1, 8):
        grads = [g + 0.5 * torch.randn(D, generator=gen) for g in grads]
        rnd = Round(t, 0, N, shared=dict(server))
        spec = mechanism.spec(D, rnd)
        payloads = [w.step(g, rnd.of(i)) for i, (w, g) in enumerate(zip(workers, grads))]
        summable = mechanism.summable(spec)
        assert not (summable and not mechanism.linear)
        if summable and any(p.parts for p in payloads):
            gathered, averaged = copy.deepcopy(server), copy.deepcopy(server)
            mechanism.fold(gathered, payloads, rnd)
            mechanism.fold(averaged, [_mean_payload(payloads, spec, D)], rnd)
            assert averaged.keys() == gathered.keys()
            for key in gathered:  # g, and a shared support (exactly: the leader's proposal survives the mean)
                torch.testing.assert_close(averaged[key], gathered[key], rtol=1e-5, atol=1e-5)
            checked += 1
        mechanism.fold(server, payloads, rnd)
    linear_single = {"ef14", "ef21", "ef21_sgdm", "clag", "3pcv5", "marina"}  # one compressor, linear aggregate
    if {"randk_shared", "shared_topk"} & set(options.values()) and name in linear_single:
        assert checked > 0, f"{name} {options}: a shared support should travel by one allreduce"
