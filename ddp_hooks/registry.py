"""Hooks by name (like torch's ``DDPCommHookType``) and one-line registration, read from the
one registry, ``compressors.mechanisms.registry``."""
from __future__ import annotations

import contextlib
import difflib
import functools
import weakref
from collections.abc import Collection

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from compressors import Mechanism, MomentumCorrectedEF14
from compressors.mechanisms.registry import REGISTRY, Entry, entry

from . import adam, optimizer_lookup, sgd
from .hook import GRAD_DTYPES, SPARSE_GRADIENTS, threepc_hook, unsupported_dtype
from .state import ThreePCState, logger

# name -> registry entry of every mechanism that runs as a DDP hook (3PCv1 is simulation only)
MECHANISMS: dict[str, Entry] = {name: e for name, e in REGISTRY.items() if e.ddp}
# register(ddp) with no name: classic error feedback, the Top-K hook that held accuracy best under users'
# own recipes (momentum SGD, AdamW with warm-up and cosine, clipping) in benchmarks/results/accuracy.md;
# EF21 at 1% lost up to 0.46 nats on the LM there
DEFAULT = "ef14"
# ... and with no options (and no Adam): over Top-K 5% in about 16 bits an entry (8-bit float values,
# block-relative 8-bit indices; 2.8-3.0% of fp32 a run), which under momentum SGD took the LM from +2.5%
# to +0.8% and digits from +2.40 to +1.07 pp at 2 ranks against Top-K 1% at 64 bits an entry
# (benchmarks/results/accuracy_packed.md)
SGD_DEFAULT: dict[str, object] = {"compressor": "topk8", "ratio": 0.05}
# register(ddp, optimizer=adam) with no name and no options: EF14 over scaled signs of a cyclic window of
# 84% of the entries (0.84 bits per entry, 2.65% of fp32 a round), which under AdamW held every task at 2
# and 4 ranks within the accuracy issue's tolerance (benchmarks/results/accuracy_window.md; every sign,
# 3.15%, left digits at 4 ranks at +0.53 pp; a window of 80% cost the LM +1.0% / +1.3%); under momentum
# SGD signs diverged, so SGD keeps DEFAULT
ADAM_DEFAULT: dict[str, object] = {"compressor": "sign", "fraction": 0.84}
# register(ddp) with no name and no options, told or finding a heavy-ball momentum SGD (sgd.corrects):
# EF14 with momentum correction (DGC) over SGD_DEFAULT's compressor, no momentum masking: under momentum SGD
# at a constant rate the LM at 4 ranks +0.4% and the held-out GRU +0.0% / -0.1% at 2 / 4 ranks, where
# ef14 is +2.3% and +1.4% / +3.2%; digits and a9a within the seeds' spread of ef14 (accuracy_default_sgd.md)
CORRECTED, SGD_MOMENTUM_DEFAULT = "ef14_mc", {**SGD_DEFAULT, "kept": 1.0}
# register(ddp) with no name and no options declines the Adam mode for a model whose nn.Embedding /
# nn.EmbeddingBag weights hold at least this share of its trainable entries (``embedding_share``): SGD_DEFAULT
# on raw gradients and the user's own Adam step. In the mode each rank normalises by its own second moment, so
# a row a step touches on one rank of n moves about 1/sqrt(n) as far as under AdamW: measured, held-out
# hashed n-grams (99.9% embeddings) -2.3 / -3.0 pp at 2 / 4 ranks and clicks (two towers, 98%) -1.2 / -1.7 pp,
# where raw gradients held within 0.2 pp (benchmarks/results/accuracy_embeddings.md); the byte LM (12%
# embeddings), a word LM whose read-out is tied to its embedding (71% of its entries, every row a gradient every
# step: not counted) and the same LM untied (41%) keep the mode, which raw gradients lose by 5.0% (accuracy_packed.md),
# 3.8% / 4.5% and 2.6%
EMBEDDED = 0.5


# register()'s own keywords: any other keyword is an option of the hook
REGISTER_KEYWORDS = ("optimizer", "warmup_steps", "log_every", "process_group", "nonfinite", "check_every",
                     "reproducible", "scaler", "dense_when_faster")


def mechanism(name: str, **options: object) -> Mechanism:
    """The mechanism registered as ``name``, built with ``options`` (e.g. ``ratio=0.01``)."""
    found = entry(name)
    if not found.ddp:
        raise ValueError(f"{name} runs in the simulation harness only ({found.help}); DDP hooks: "
                         f"{', '.join(MECHANISMS)}")
    return found(**options)


def register(ddp: nn.parallel.DistributedDataParallel, name: str | None = None, *,
             optimizer: torch.optim.Optimizer | str | None = optimizer_lookup.AUTO, warmup_steps: int = 1,
             log_every: int = 0, process_group: dist.ProcessGroup | None = None, nonfinite: str = "propagate",
             check_every: int = 0, reproducible: bool = False, scaler: torch.amp.GradScaler | None = None,
             dense_when_faster: bool = False, **options: object) -> ThreePCState:
    """Register the threepc hook ``name`` (default ``DEFAULT``, EF14; with no options
    ``SGD_DEFAULT``, over Top-K 5% in 8-bit floats and block-relative 8-bit indices; told an Adam
    optimizer, ``ADAM_DEFAULT``, over scaled signs of 84% of the entries a round; told a
    heavy-ball momentum SGD, ``CORRECTED`` with ``SGD_MOMENTUM_DEFAULT``) on ``ddp`` and
    return its state. The hook communicates in ``ddp``'s own process group unless
    ``process_group`` is given; ``nonfinite``, ``check_every``, ``reproducible``, ``scaler``
    (the training's ``torch.amp.GradScaler``: memories in unscaled units) and ``dense_when_faster``
    (measure the step with and without compression, keep the faster: ``link_choice``; not in the
    Adam mode, whose step applies the hook's rounds) are ``ThreePCState``'s.

    ``optimizer``: the training's optimizer, for the optimizer-aware mode (``ddp_hooks.adam``).
    Left out (``"auto"``), a registration without a name looks for it at the first round
    (``optimizer_lookup``: the one optimizer that holds the model's parameters) and takes the
    Adam mode when it is an Adam or AdamW the mode supports, momentum correction when it is an
    SGD with heavy-ball momentum (``sgd.corrects``), except for a model made of embeddings
    (``EMBEDDED``: raw gradients, the Adam's own step); ``None``: raw gradients, no lookup;
    with a name, only an optimizer passed here is followed. An Adam or
    AdamW: the hook compresses the momentum of Adam-normalised gradients (each rank
    reads the optimizer's current betas and follows the user's ``clip_grad_norm_``) and
    ``optimizer.step`` becomes AdamW's linear step on the agreed momentum (measured, the default
    over 84% of the signs, AdamW with clipping: the LM's gap +0.8% at 2 ranks and +0.9% at 4,
    benchmarks/results/accuracy_window.md; with Top-K 1% the mode took digits
    from +3.13 to -0.07 pp, benchmarks/results/accuracy_adam.md). An SGD with heavy-ball momentum
    (the default without a name, or ``ef14_mc`` by name): momentum corrected before compression
    (``compressors.mechanisms.ef14_momentum``), the hook reads the SGD's momentum every round and
    ``optimizer.step`` follows the user's ``clip_grad_norm_`` into the hook's memories before
    torch's SGD step (``ddp_hooks.sgd``); one step per synchronised backward. Another SGD
    (Nesterov, no momentum, dampening): the plain hook, whose error is carried across the SGD's
    learning-rate changes (``carried``); another optimizer: the plain hook. Validated here, before any
    collective, on every rank.

        >>> state = ddp_hooks.register(ddp_model, "ef21", ratio=0.01)
        >>> state = ddp_hooks.register(ddp_model, optimizer=adamw)   # default hook, Adam-aware
        >>> state = ddp_hooks.register(ddp_model, "ef14_mc", compressor="topk8", ratio=0.05, optimizer=sgd)
        >>> state.stats.summary()["fraction_of_dense"]
    """
    compiled = getattr(ddp, "_orig_mod", None)  # torch.compile(ddp): the hook goes on the DDP wrapper inside
    if isinstance(compiled, nn.parallel.DistributedDataParallel):
        ddp = compiled
    if not isinstance(ddp, nn.parallel.DistributedDataParallel):
        raise TypeError(f"ddp_hooks.register needs the DistributedDataParallel wrapper, got {type(ddp).__name__}: "
                        "wrap the model first (DistributedDataParallel(model)); with Accelerate, register on what "
                        "accelerator.prepare returns, which is the plain model when it sees one process (on CPU: "
                        "Accelerator(cpu=True))")
    takes = {o.name for o in REGISTRY[name or DEFAULT].options} if (name or DEFAULT) in REGISTRY else set()
    typos = {o: m[0] for o in options
             if o not in takes and (m := difflib.get_close_matches(o, REGISTER_KEYWORDS, 1, cutoff=0.6))}
    if typos:
        raise ValueError(f"ddp_hooks.register got {sorted(typos)}: did you mean "
                         f"{', '.join(f'{k}=' for k in typos.values())}? register's own keywords: "
                         f"{', '.join(REGISTER_KEYWORDS)}; the other keywords are the hook's options")
    ignored = set(getattr(ddp, "parameters_to_ignore", ()))  # DDP's _set_params_and_buffers_to_ignore_for_model
    sparse = [module_name for module_name, m in ddp.module.named_modules()
              if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse and m.weight.requires_grad
              and f"{module_name}.weight" not in ignored]
    if sparse:
        raise ValueError(f"{SPARSE_GRADIENTS}; sparse modules: {sparse[:5]}")
    other = [f"{n} ({p.dtype})" for n, p in ddp.module.named_parameters()
             if p.requires_grad and p.dtype not in GRAD_DTYPES and n not in ignored]
    if other:
        raise TypeError(unsupported_dtype(f"these parameters are not: {other[:5]}"))
    auto = isinstance(optimizer, str)
    if auto and optimizer != optimizer_lookup.AUTO:
        raise ValueError(f"optimizer= takes the training's optimizer, None or {optimizer_lookup.AUTO!r} (look for "
                         f"it), got {optimizer!r}")
    if auto:  # looked for at the first round (_adopt_found), when the training's optimizer exists
        optimizer = None
    optimizer = adam.unwrapped(optimizer) if optimizer is not None else None
    settings = adam.adam_settings(optimizer) if optimizer is not None else None
    default = name is None
    if settings is not None and default and not options and _declines(ddp):
        settings = None  # raw gradients, the user's own Adam step
    chosen = _default(options, settings, optimizer, ddp) if default else mechanism(name, **options)
    corrected = isinstance(chosen, MomentumCorrectedEF14) and optimizer is not None  # ddp_hooks.sgd's mode
    if corrected:
        if settings is not None:
            raise ValueError(f"{name} corrects the momentum of SGD; told an {type(optimizer).__name__}, register "
                             "without a name (the Adam mode sends the momentum of Adam-normalised gradients)")
        if "momentum" in options:
            raise ValueError(f"{name}: momentum= is read from the optimizer it is told; drop momentum= (or do not "
                             "pass optimizer=)")
        _told(chosen, optimizer)
    if settings is not None and not default:
        chosen = adam.normalized(chosen, settings, optimizer)
    if settings is not None and dense_when_faster:
        raise ValueError(f"dense_when_faster runs some iterations by DDP's plain allreduce, and the Adam mode's "
                         f"{type(optimizer).__name__} step applies the hook's rounds only: drop dense_when_faster, or "
                         "register without optimizer= (raw gradients, the optimizer's own step)")
    state = ThreePCState(chosen, process_group=process_group,
                         warmup_steps=warmup_steps, log_every=log_every, model=ddp, nonfinite=nonfinite,
                         check_every=check_every, reproducible=reproducible, scaler=scaler,
                         dense_when_faster=dense_when_faster)
    if settings is not None or corrected:
        adam.check_attachable(optimizer, ddp)
    if state.world_size() == 1:
        logger.warning("threepc: register on a world of 1 rank: nothing crosses a link, and the hook still "
                       "compresses this rank's gradient (the accuracy cost without the bandwidth gain)")
    try:
        ddp.register_comm_hook(state, threepc_hook)
    except RuntimeError as e:
        if "only be called once" not in str(e):
            raise
        raise RuntimeError("ddp_hooks.register: this DDP model already has a comm hook (torch allows one per "
                           "wrapper). Keep the state the first register() returned; to change hooks, wrap the model "
                           "in a new DistributedDataParallel and register on it") from e
    if settings is not None:  # once the hook is in: a second register() on this model raised above
        adam.attach(optimizer, state)
    elif corrected:
        sgd.attach(optimizer, state, note=optimizer_lookup.CORRECTING if default else "")
    elif auto and default:
        state.deferred = functools.partial(_adopt_found, ddp, state, options)
    return state


def _default(options: dict[str, object], settings: adam.AdamSettings | None,
             optimizer: torch.optim.Optimizer | None, model: nn.Module) -> Mechanism:
    """``register``'s mechanism without a name: ``DEFAULT`` with ``options`` (or the defaults'
    options), in the Adam mode when told an Adam (``settings``); with no options, told a
    heavy-ball momentum SGD, ``CORRECTED`` (not yet told: ``_told``)."""
    if settings is None and not options and sgd.corrects(optimizer, model):
        return mechanism(CORRECTED, **SGD_MOMENTUM_DEFAULT)
    chosen = mechanism(DEFAULT, **(options or (ADAM_DEFAULT if settings is not None else SGD_DEFAULT)))
    if settings is not None:
        return adam.normalized(chosen, settings, optimizer)
    if not options and isinstance(optimizer, torch.optim.SGD):
        carried(chosen, optimizer)
    return chosen


def embedding_share(model: nn.Module, ignored: Collection[str] = ()) -> float:
    """The share of ``model``'s trainable parameter entries (but those named in ``ignored``, which
    DDP leaves out) in ``nn.Embedding`` and ``nn.EmbeddingBag`` weights that no other module uses: a
    row the step's batch does not look up gets no gradient. A weight tied to a read-out (GPT-2's)
    gets one in every row, every step, and does not count."""
    params = {id(p): p for n, p in model.named_parameters() if p.requires_grad and n not in ignored}
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}
    tied = {id(p) for m in model.modules() if not isinstance(m, (nn.Embedding, nn.EmbeddingBag))
            for p in m.parameters(recurse=False)}
    total = sum(p.numel() for p in params.values())
    return sum(params[i].numel() for i in embedded - tied if i in params) / total if total else 0.0


def _embedded(ddp: nn.parallel.DistributedDataParallel) -> float:
    """``embedding_share`` of the parameters ``ddp`` synchronises."""
    return embedding_share(ddp.module, set(getattr(ddp, "parameters_to_ignore", ())))


def _declines(ddp: nn.parallel.DistributedDataParallel) -> bool:
    """Whether the default declines the Adam mode for ``ddp``'s model (``EMBEDDED``), logged."""
    share = _embedded(ddp)
    if share < EMBEDDED:
        return False
    logger.info("threepc: embeddings hold %.0f%% of the model's parameters: register(ddp) compresses raw gradients "
                "and the Adam steps on their aggregate (the Adam mode moves a row one rank's batch touched about "
                "1/sqrt(n) as far as AdamW); register(ddp, 'ef14', optimizer=opt, compressor='sign', fraction=0.84) "
                "takes the mode anyway", 100 * share)
    return True


def carried(chosen: Mechanism, optimizer: torch.optim.SGD) -> None:
    """The plain SGD default told (or finding) an SGD that momentum correction does not take
    (Nesterov, no momentum, dampening): its EF14 carries e_i into round t as e_i lr_{t-1} / lr_t
    (``EF14.rate``, EF-SGD's update units, as told ``ef14_mc`` does), reading the first param
    group's learning rate every round. Measured under Nesterov with warm-up, cosine decay and
    clipping (``benchmarks/results/accuracy_lr_carry.md``)."""
    chosen.rate = adam.rate_of(optimizer)


def _told(chosen: MomentumCorrectedEF14, optimizer: torch.optim.Optimizer) -> None:
    """``ef14_mc`` told its SGD: every round reads the optimizer's momentum and learning rate, and
    the step follows the user's clipping (``sgd.attach``, once the hook is registered)."""
    chosen.follow, chosen.rate = sgd.follows(optimizer), adam.rate_of(optimizer)
    chosen.clipping = True


def _late(optimizer: torch.optim.Optimizer, ddp: nn.parallel.DistributedDataParallel, corrects: bool,
          when: str) -> str | None:
    """What to say about ``optimizer``, found holding the model only after the first round (the
    mechanism is chosen there): an Adam or AdamW would have had the Adam mode, a heavy-ball SGD
    (``corrects``: the registration took no options) momentum correction; None if neither."""
    fix = ("Build the optimizer before the first backward, or pass it: register(ddp, optimizer=opt); "
           "optimizer=None silences this")
    name = type(optimizer).__name__
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)) and _embedded(ddp) < EMBEDDED:
        return (f"threepc: register(ddp) found an {name} only {when}, after the first round chose the mechanism, so "
                "the default hook compresses raw gradients (under Adam that costs accuracy: the LM +5.0% in the "
                f"accuracy suite). {fix}")
    if corrects and sgd.corrects(optimizer, ddp.module):
        return (f"threepc: register(ddp) found a momentum {name} only {when}, after the first round chose the "
                "mechanism, so the default hook does not correct its momentum (the LM at 4 ranks +2.3% against "
                f"+0.4% in the accuracy suite). {fix}")
    return None


def _look_again(ddp: nn.parallel.DistributedDataParallel, state: ThreePCState, corrects: bool, first: int,
                final: bool) -> bool:
    """No optimizer held the model at the first round: at the next round's first bucket, warn if
    one the default would have followed holds it now (``_late``; built after the first
    backward). If none holds it yet, the first optimizer step that moves the model's parameters
    looks once more (``_watch_steps``). Whether the look is done; it never raises."""
    if not final or state.iteration == first:
        return False
    with contextlib.suppress(Exception):
        held = [h.optimizer for h in optimizer_lookup.holding(ddp.module)]
        said = [m for m in (_late(o, ddp, corrects, "after the first backward") for o in held) if m is not None]
        if said:
            optimizer_lookup.warn(said[0])
        elif not held:
            _watch_steps(ddp, corrects)
    return True


def _watch_steps(ddp: nn.parallel.DistributedDataParallel, corrects: bool) -> None:
    """A global optimizer step pre-hook (``register_optimizer_step_pre_hook``)
    that waits for the first step of an optimizer holding the model's parameters, says ``_late``'s
    warning if it has one, and removes itself (also at any step once the model is gone: it holds
    the model weakly). It never raises."""
    model, ids = weakref.ref(ddp), {id(p) for p in ddp.module.parameters() if p.requires_grad}

    def check(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        with contextlib.suppress(Exception):
            wrapper = model()
            if wrapper is None:  # the model is gone: nothing left to watch
                handle.remove()
                return
            if not any(id(p) in ids for group in optimizer.param_groups for p in group["params"]):
                return
            handle.remove()
            said = _late(optimizer, wrapper, corrects, "at its first step")
            if said is not None:
                optimizer_lookup.warn(said)

    handle = register_optimizer_step_pre_hook(check)


def _adopt_found(ddp: nn.parallel.DistributedDataParallel, state: ThreePCState, options: dict[str, object],
                 final: bool) -> bool:
    """``register(ddp)``'s look for the optimizer (``optimizer_lookup``), before the first round:
    an Adam or AdamW the mode takes makes the state run the Adam mode, and a heavy-ball momentum
    SGD momentum correction (``CORRECTED``), as if it had been passed.
    A state the optimizer already holds (a checkpoint loaded into it, plain steps) is converted
    as a load after ``register`` would be (``adam.imported``). Whether the choice is made: not
    while no optimizer holds the model's parameters, unless ``final`` (the first round). It never
    raises (a failure here on one rank would leave the others waiting in the configuration
    check, which compares the mechanisms instead)."""
    previous, held = state.mechanism, None
    try:
        found = optimizer_lookup.lookup(ddp.module, corrects=not options)
        if found.optimizer is None:
            if found.sgd is not None and not options:  # options choose DEFAULT's compressor: the plain hook
                carried(state.mechanism, found.sgd)
            if final or found.held:
                logger.info("threepc: register(ddp) found no optimizer for the Adam mode or momentum correction: "
                            "%r", state.mechanism)
            if final and not found.held:  # no optimizer yet: one more look, at the next round, to warn
                state.deferred = functools.partial(_look_again, ddp, state, not options, state.iteration)
                return False
            return final or found.held
        if isinstance(found.optimizer, torch.optim.SGD):  # a heavy-ball SGD (the lookup returns no other)
            if not options:  # options choose DEFAULT's compressor: the plain hook
                state.adopt(chosen := _default(options, None, found.optimizer, ddp))
                _told(chosen, found.optimizer)
                sgd.attach(found.optimizer, state, note=optimizer_lookup.CORRECTING)
                logger.info("threepc: register(ddp) found a momentum SGD: %r", state.mechanism)
            return True
        optimizer = found.optimizer
        if not options and _declines(ddp):  # the plain default registered stays
            return True
        state.adopt(_default(options, adam.adam_settings(optimizer), optimizer, ddp))
        if state.link is not None:  # the mode's step applies rounds only: no dense iterations (every rank alike)
            state.link = None
            logger.warning("threepc: register(ddp, dense_when_faster=True) found %s and runs its Adam mode, whose "
                           "step applies the hook's rounds only: it always compresses", type(optimizer).__name__)
        if optimizer.state:  # a checkpoint loaded into it, or plain steps: converted as a load after register is
            held = optimizer.state_dict()
            optimizer.load_state_dict(adam.imported(optimizer, held, state=state))
        adam.attach(optimizer, state, note=optimizer_lookup.FOUND)
        logger.info("threepc: register(ddp) found %s: its Adam mode, %r", type(optimizer).__name__, state.mechanism)
    except Exception as e:  # noqa: BLE001 - see above
        if state.mechanism is not previous:
            state.adopt(previous)
        if held is not None:  # the tensors of the state it held, untouched by the conversion
            with contextlib.suppress(Exception):
                optimizer.load_state_dict(held)
        optimizer_lookup.warn(f"threepc: register(ddp) could not follow the optimizer it found ({type(e).__name__}: "
                              f"{e}); the default hook compresses raw gradients. Pass the optimizer: register(ddp, "
                              "optimizer=opt)")
    return True
