"""Per-rank state of a threepc hook: one mechanism instance and one estimate per bucket.

Buckets are identified by the parameters they hold, never by ``bucket.index()``: DDP rebuilds
its buckets after the first iteration, and a new DDP wrapper (other ``bucket_cap_mb``) groups
parameters differently. All memories are per-coordinate, so a bucket's state is the
concatenation of its parameters' slices: a bucket that appears after a rebuild, or after
``load_state_dict``, is assembled from the slices of the buckets (or checkpoint) that held its
parameters. Only a bucket whose parameters have no state at all runs a dense warm-up round.

The state also keeps its *compression units* (the parameter groups its bucket states cover,
saved in checkpoints as ``layout``): a DDP bucket that is exactly a union of units is
compressed unit by unit. A fresh DDP wrapper runs its first iteration with one bucket of every
parameter (DDP rebuilds its buckets after it), so a resumed run compresses exactly the groups
the saved run compressed: Top-K supports, triggers, seeds (``Round`` keys use the tensor
length) and float reduction orders are the same, and the trajectory is bit-identical.
"""
from __future__ import annotations

import hashlib
import json
import logging
import numbers
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn

from compressors import Mechanism, Round, __version__
from compressors.core.rounds import MoveHistory

from .link_choice import LinkChoice
from .memory_order import bucket_order, logical
from .protocol import all_gather_single
from .stats import CommStats

logger = logging.getLogger("threepc")

SERVER = "server."  # prefix of the aggregate state (its "g" and any more) beside the worker memory
ESTIMATE = SERVER + "g"
NONFINITE = ("propagate", "raise")
# What to do when a configuration field differs across ranks (appended to the error).
FIXES = {"checkpoint": " (each rank saves its own hook state, torch.save(state.state_dict(), f'hook-rank{rank}.pt'), "
                       "and loads the file it saved: the memories differ per rank)",
         "iteration": " (every rank loads the hook state it saved at the same step, or none does)",
         "optimizer": " (pass the same optimizer= on every rank: told, ef14_mc follows its momentum and clipping)"}


class ThreePCError(RuntimeError):
    """A failure the hook agreed on with every rank (each rank raises it in the same round, from
    DDP's ``backward()``; the collectives of the round have completed and DDP's reducer stays
    usable): a non-finite gradient under ``nonfinite="raise"``, an exception on some rank,
    ranks configured differently, or replicas of the aggregate that diverged. ``backward()``
    raises it as torch re-raises what a comm hook's future fails with: a ``RuntimeError`` whose
    message contains this one's; ``ThreePCState.last_error`` is the ThreePCError itself."""


@dataclass
class BucketState:
    """One bucket on one rank: its parameters, the worker mechanism and this rank's replica of
    the aggregate state (``server["g"]`` is the estimate g)."""

    params: tuple[int, ...]  # id() of each parameter, in bucket order
    sizes: tuple[int, ...]
    worker: Mechanism
    server: dict[str, Tensor] | None = None  # fp32, set by the first dense round's callback
    spare: dict[str, Tensor] = field(default_factory=dict)  # the aggregate entries a committed round replaced
    compressed: int = 0  # compressed rounds committed

    @property
    def estimate(self) -> Tensor:
        """This rank's replica of the aggregate direction g."""
        return self.server["g"]

    def tensors(self) -> dict[str, Tensor]:
        out = self.worker.memory.tensors() if self.worker.memory is not None else {}
        for name, t in (self.server or {}).items():
            out[SERVER + name] = t
        return out

    def slices(self) -> dict[int, dict[str, Tensor]]:
        """Every parameter's slice of every memory tensor."""
        split = {name: t.split(self.sizes) for name, t in self.tensors().items()}
        return {p: {name: parts[j] for name, parts in split.items()} for j, p in enumerate(self.params)}


COMPILED = "_orig_mod"  # the path component torch.compile's wrapper adds to its module's parameter names


def plain(name: str) -> str:
    """A parameter's name without ``torch.compile``'s ``_orig_mod`` components: a checkpoint of a
    compiled model loads into the plain one and back."""
    return ".".join(part for part in name.split(".") if part != COMPILED)


def _plain_names(state: dict[str, object], known: Collection[str]) -> dict[str, object]:
    """``state`` with every parameter name that is not ``known`` ``plain`` (checkpoints saved
    before names were)."""
    def name(n: str) -> str:
        return n if n in known else plain(n)

    return {**state, "memory": {name(n): s for n, s in state["memory"].items()},
            "rebuild": [name(n) for n in state.get("rebuild", [])],
            "layout": [[name(n) for n in unit] for unit in state.get("layout", [])],
            "moves": {name(n): h for n, h in state.get("moves", {}).items()}}


def _entries(t: Tensor) -> int:
    """The coordinates a parameter's memory slice covers (its first dimension: a per-rank copy
    of EF21+ or SASG adds a second)."""
    return t.shape[0] if t.dim() else 1


class ThreePCState:
    """State of a threepc DDP hook on one rank.

    Args:
        mechanism: the per-worker mechanism, e.g. ``EF21(TopK(ratio=0.01))``; each bucket gets
            its own copy (``mechanism.spawn()``).
        process_group: the group to communicate in (default: ``model``'s DDP process group, else
            the world).
        warmup_steps: iterations of plain averaged allreduce at the start (at least 1: DDP
            rebuilds its buckets after the first iteration). They set g_i = grad_i and g = mean.
        log_every: log ``stats()`` through the ``threepc`` logger every N iterations (0: never).
        model: the module (or DDP wrapper) whose parameters the buckets hold; needed for
            ``state_dict``/``load_state_dict``, which key memories by parameter name.
        reproducible: sum every payload in rank order on every rank (an all_gather even where
            an averaging all_reduce would do, n times its receive volume), so that results are
            bit-identical to the simulation harness and independent of the collective's
            reduction order (tests/test_parity.py). Default: all_reduce where possible.
        nonfinite: what a round does when some rank's gradient (or payload) holds inf/NaN; every
            rank learns it from a flag sent with the payloads and acts alike, and no memory (worker
            or aggregate) changes. ``"propagate"`` (default): the bucket's gradient becomes NaN on
            every rank, so ``torch.amp.GradScaler`` skips the step (``stats.nonfinite_rounds``
            counts these rounds); ``"raise"``: every rank raises ``ThreePCError`` naming the
            parameters.
        check_every: every N iterations, all_gather a checksum of every aggregate replica and
            raise ``ThreePCError`` on every rank if they differ (0: never).
        scaler: the ``torch.amp.GradScaler`` of the training, if any. The hook then divides each
            bucket by the scaler's current scale S before the mechanism sees it and returns S g:
            memories (error feedback, Adam's moments) stay in the gradient's own units when S
            changes (growth, back-off after an overflow), and ``scaler.unscale_`` still sees
            what it scaled. Without it a hook compresses S grad, and a memory written at one
            scale is read at the next.

    Before the first bucket of every iteration the hook all_gathers a hash of this
    configuration (version, mechanism and options, warm-up, policies, iteration, checkpoint, the
    bucket's dtype and layout; 8 bytes a rank); ranks that differ all raise ``ThreePCError``
    naming the field and each rank's value (a checkpoint loaded on some ranks only: the
    iterations differ). An exception inside the hook on one rank is raised on every rank.

    Register it with ``ddp.register_comm_hook(state, threepc_hook)``.
    """

    __slots__ = ("mechanism", "process_group", "warmup_steps", "log_every", "reproducible", "nonfinite",
                 "check_every", "scaler", "iteration", "stats", "failure", "checking", "_buckets", "_owner", "_pending",
                 "_rebuild", "_layout", "_names", "history", "warned", "transaction", "committed_iterations",
                 "_loaded_from", "deferred", "last_error", "local_failure", "_params", "link")

    def __init__(self, mechanism: Mechanism, *, process_group: dist.ProcessGroup | None = None,
                 warmup_steps: int = 1, log_every: int = 0, model: nn.Module | None = None,
                 reproducible: bool = False, nonfinite: str = "propagate", check_every: int = 0,
                 scaler: torch.amp.GradScaler | None = None, dense_when_faster: bool = False) -> None:
        for name, value, low, why in (("warmup_steps", warmup_steps, 1, " (DDP rebuilds its buckets after the first "
                                                                          "iteration, which is dense)"),
                                      ("log_every", log_every, 0, " (0: never)"),
                                      ("check_every", check_every, 0, " (0: never)")):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"{name} must be an int >= {low}{why}, got {value!r}")
        if nonfinite not in NONFINITE:
            raise ValueError(f"nonfinite must be one of {NONFINITE}, got {nonfinite!r}")
        for name, flag in (("reproducible", reproducible), ("dense_when_faster", dense_when_faster)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False, got {flag!r}")
        if process_group is not None and not isinstance(process_group, dist.ProcessGroup):
            raise ValueError(f"process_group must be a torch.distributed ProcessGroup (e.g. dist.new_group(ranks)) "
                             f"or None (the DDP model's own), got {process_group!r}")
        if scaler is not None and not callable(getattr(scaler, "get_scale", None)):
            raise ValueError(f"scaler must be the training's torch.amp.GradScaler or None, got {scaler!r}")
        warmup_steps, log_every, check_every = int(warmup_steps), int(log_every), int(check_every)
        self.process_group = process_group
        self.warmup_steps = warmup_steps
        self.log_every = log_every
        self.reproducible = reproducible
        self.nonfinite, self.check_every = nonfinite, check_every
        self.scaler = scaler
        self.iteration = 0
        self.stats = CommStats()
        self.failure: ThreePCError | None = None  # a failed configuration check or replica check: final
        self.last_error: Exception | None = None  # the last failure backward() raised (torch wraps it)
        self.local_failure: str | None = None  # decoding failed on this rank alone: every later round flags it
        self.checking: tuple | None = None  # the checks issued at this iteration's first bucket (``agreed`` waits)
        self._buckets: dict[tuple[int, ...], BucketState] = {}
        self._owner: dict[int, tuple[int, ...]] = {}  # parameter id -> key of the bucket holding it
        self._pending: dict[int, dict[str, Tensor]] = {}  # loaded slices not yet in a bucket
        self._rebuild: set[int] = set()  # loaded on another world size: their first round is dense
        self._layout: list[tuple[int, ...]] = []  # loaded compression units not yet in a bucket
        self._loaded_from: int | None = None  # the rank whose checkpoint this rank loaded, if not its own
        self.warned: set[int] = set()  # unit sizes whose payload outweighs dense, adam.DROPPED (warned once)
        self.committed_iterations = 0  # iterations whose rounds all committed: directions to apply (adam.attach)
        self.transaction = None  # the rounds of the last iteration (hook._Iteration): committed or rolled back
        self._names: dict[int, str] | None = None
        self._params: dict[int, Tensor] = {}  # id -> parameter (its memory order, for checkpoints)
        self.deferred: Callable[[bool], bool] | None = None  # a choice register() left to the first round (resolve)
        self.link = LinkChoice() if dense_when_faster else None  # compressed or dense, measured (link_choice)
        self.adopt(mechanism)
        if model is not None:
            self.bind(model)
            if process_group is None:
                self.process_group = getattr(model, "process_group", None)  # the DDP model's own group

    def adopt(self, mechanism: Mechanism) -> None:
        """Run ``mechanism`` (before the first round: ``register`` may choose it late, ``resolve``)."""
        if self.iteration or self._buckets:
            raise RuntimeError("ThreePCState.adopt: rounds ran or a checkpoint was loaded; a mechanism is chosen "
                               "before either")
        try:  # fail before the first round, on every rank, for mechanisms DDP cannot run
            mechanism.spec(1 << 10, Round(1, 0, 2))
        except NotImplementedError as e:
            raise ValueError(f"{mechanism!r} cannot run as a DDP hook: {e}") from None
        self.mechanism = mechanism
        self.history = MoveHistory(mechanism.window)  # per parameter id: ||g slice||^2, most recent first

    def resolve(self, final: bool = True) -> None:
        """Make the choice ``register`` deferred (``deferred(final)``, which says whether it made
        it): at the first round (``final``), or at ``state_dict``/``load_state_dict`` when they
        come first and can."""
        if self.deferred is not None and self.deferred(final):
            self.deferred = None

    def bind(self, model: nn.Module) -> None:
        """Learn parameter names (for checkpoints) from ``model`` or its DDP wrapper."""
        module = getattr(model, "module", model)
        named = {id(p): name for name, p in module.named_parameters()}
        plain_names = {p: plain(name) for p, name in named.items()}
        # two parameters one plain name would fold together (a module of its own named _orig_mod): keep torch's
        self._names = plain_names if len(set(plain_names.values())) == len(plain_names) else named
        self._params = {id(p): p for p in module.parameters()}

    def loss_scale(self) -> float:
        """The scale of the gradients this backward pass produced (``scaler``'s, else 1)."""
        return float(self.scaler.get_scale()) if self.scaler is not None and self.scaler.is_enabled() else 1.0

    @property
    def group(self) -> dist.ProcessGroup:
        return self.process_group if self.process_group is not None else dist.group.WORLD

    def world_size(self) -> int:
        """The group's size (1 outside a process group: a state used standalone)."""
        return self.group.size() if self.process_group is not None or dist.is_initialized() else 1

    def rank(self) -> int:
        """This rank in the group (0 outside a process group)."""
        return self.group.rank() if self.process_group is not None or dist.is_initialized() else 0

    def name(self, param: int) -> str:
        """A parameter's name (its id if the state is not bound to a model)."""
        return (self._names or {}).get(param, f"<parameter id {param}>")

    # -- agreement across ranks (collectives in the hook's thread) --------------------------
    def config(self, grad: Tensor, params: list[Tensor]) -> dict[str, str]:
        """What every rank must share, as short descriptions by field."""
        try:  # the repr may read live settings (the optimizer's betas), which may be invalid on this rank only
            mechanism = repr(self.mechanism)
        except Exception as e:  # noqa: BLE001 - compared, so that every rank raises
            mechanism = f"unreadable on this rank: {type(e).__name__}: {e}"
        return {"threepc": __version__, "mechanism": mechanism, "warmup_steps": str(self.warmup_steps),
                "nonfinite": self.nonfinite, "check_every": str(self.check_every),
                "reproducible": str(self.reproducible), "iteration": str(self.iteration),
                "dense_when_faster": str(self.link is not None),
                "scaler": "given" if self.scaler is not None else "none",
                "optimizer": "followed" if getattr(self.mechanism, "follow", None) is not None else "not followed",
                "checkpoint": "its own" if self._loaded_from is None else f"rank {self._loaded_from}'s",
                "bucket": f"{grad.dtype}, {len(params)} parameters, {grad.numel()} elements"}

    def check(self, grad: Tensor, params: list[Tensor], first: bool) -> None:
        """At the first bucket of every iteration: issue the configuration check and, every
        ``check_every``-th iteration, the replica check, one all_gather of a hash each, without
        waiting (``agreed`` waits, before the round's first payload collective, so that the first
        bucket's compression hides its latency). Every iteration, not only the first round after
        construction or ``load_state_dict``: a rank that alone loads a checkpoint mid-training
        issues the same collectives as the others, and the iterations they compare then differ (a
        check after the load only, on that rank only, met the others' payload collective: gloo
        aborted the process). Raises the failure this state keeps (``failure``)."""
        if self.failure is not None:
            raise self.failure
        if not first:
            return
        self.agreed()  # an iteration that raised before its first round (on every rank) left its check
        checks = {"configuration": self.config(grad, params)}
        if self.check_every and self.iteration and self.iteration % self.check_every == 0:
            checks["aggregate replica"] = {"checksum": str(self.checksum())}
        n = self.group.size()
        digests = (hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).digest() for fields in checks.values())
        mine = torch.tensor([int.from_bytes(d[:8], "little") >> 1 for d in digests], dtype=torch.int64,
                            device=grad.device)
        hashes = mine.new_empty(n * mine.numel())
        work = all_gather_single(hashes, mine, group=self.group, async_op=True)
        width = mine.numel() * mine.element_size()
        self.stats.add_control("checks", width)
        self.stats.ring_all_gather(width, n)
        self.checking = (checks, mine, hashes, work)

    def agreed(self) -> None:
        """Wait for the checks ``check`` issued, if any; for the first whose hashes differ, gather
        its fields and raise the same ``ThreePCError`` on every rank (and keep it: ``failure``)."""
        if self.checking is None:
            return
        (checks, mine, hashes, work), self.checking = self.checking, None
        work.wait()
        group, n = self.group, self.group.size()
        agree = (hashes.view(n, -1) == mine).all(dim=0).tolist()
        for (what, fields), same in zip(checks.items(), agree):
            if same:
                continue
            every: list[dict[str, str] | None] = [None] * n
            dist.all_gather_object(every, fields, group=group)
            differ = [f"{key}: " + ", ".join(f"rank {r} {f.get(key)!r}" for r, f in enumerate(every))
                      + FIXES.get(key, "") for key in fields if len({f.get(key) for f in every}) > 1]
            self.failure = ThreePCError(f"threepc {what} differs across ranks (rank {group.rank()} of {n}): "
                                        + "; ".join(differ))
            raise self.failure

    def checksum(self) -> int:
        """A position-weighted checksum of the bits of every aggregate tensor (the same on every
        rank while the replicas are bit-identical)."""
        total = 0
        for state in self._buckets.values():
            for t in (state.server or {}).values():
                bits = t.detach().float().reshape(-1).view(torch.int32).long()
                total += int((bits * torch.arange(1, bits.numel() + 1, device=bits.device)).sum())
        return total & ((1 << 63) - 1)

    # -- buckets --------------------------------------------------------------------------
    @property
    def buckets(self) -> list[BucketState]:
        """The live bucket states (one per bucket of the current layout)."""
        return list(self._buckets.values())

    def directions(self) -> dict[int, Tensor]:
        """id(parameter) -> its slice (a view) of the aggregate direction g of its bucket."""
        return {p: g for state in self._buckets.values() if state.server is not None
                for p, g in zip(state.params, state.estimate.split(state.sizes))}

    def bucket_state(self, params: list[Tensor]) -> BucketState | None:
        """The state of the bucket holding ``params``, assembled from parameter slices if it is
        new; None if some parameter has no state yet (the bucket then needs a dense round)."""
        key = tuple(id(p) for p in params)
        found = self._buckets.get(key)
        if found is not None:
            return found
        if self._rebuild.intersection(key):
            return None
        joined = self._joined(key)
        if joined is None:
            return None
        state = BucketState(key, tuple(p.numel() for p in params), self.mechanism.spawn())
        state.server = {name[len(SERVER):]: t for name, t in joined.items() if name.startswith(SERVER)}
        state.worker.memory = state.worker.memory_type.of(
            {name: t for name, t in joined.items() if not name.startswith(SERVER)})
        self.install(state)
        return state

    def _joined(self, key: tuple[int, ...]) -> dict[str, Tensor] | None:
        """The memory and aggregate of the parameters ``key`` (live buckets or a loaded
        checkpoint), joined in ``key``'s order; None if some parameter has none."""
        split: dict[tuple[int, ...], dict[int, dict[str, Tensor]]] = {}  # old bucket -> its slices
        slices = []
        for p in key:
            owner = self._owner.get(p)
            if owner is not None and owner not in split:
                split[owner] = self._buckets[owner].slices()
            piece = split[owner][p] if owner is not None else self._pending.get(p)
            if piece is None or ESTIMATE not in piece:
                return None
            slices.append(piece)
        return {name: torch.cat([s[name] for s in slices]) for name in slices[0]}

    def units(self, params: list[Tensor]) -> list[tuple[int, ...]]:
        """The compression units of the bucket holding ``params``: the bucket itself, unless it is
        exactly a union of known units (live bucket states, or a checkpoint's layout), which are
        then compressed one by one, as they were before. A bucket that holds the parameters of one
        live state that has seen only its dense round, in another order (DDP's rebuilt buckets
        after the first iteration), is its own unit: its state is re-laid out once in the
        bucket's order (``bucket_state``) instead of the bucket being copied into the old order
        every round."""
        key = tuple(id(p) for p in params)
        if key in self._buckets:
            return [key]
        owner = self._buckets.get(self._owner.get(key[0], ())) if key else None
        if owner is not None and owner.compressed == 0 and set(owner.params) == set(key):
            return [key]
        known = {p: unit for unit in (*self._buckets, *self._layout) for p in unit}
        members, units = set(key), []
        for p in key:
            unit = known.get(p)
            if unit is None or not members.issuperset(unit):
                return [key]
            if unit not in units:
                units.append(unit)
        return units

    def new_bucket_state(self, params: list[Tensor], *, install: bool = True) -> BucketState:
        """A fresh state for the bucket holding ``params`` (its memory is set by a dense round;
        the hook installs it once the round succeeded on every rank). A mechanism whose dense
        round continues its memory (``carries_memory``: ``AdamNormalized``'s moments through
        the warm-up rounds) gets its parameters' current memory, when every one has some."""
        state = BucketState(tuple(id(p) for p in params), tuple(p.numel() for p in params), self.mechanism.spawn())
        held = self._joined(state.params) if self.mechanism.carries_memory else None
        if held is not None:  # copies: the live states stay as they are until the round commits
            state.worker.memory = state.worker.memory_type.of(
                {name: t for name, t in held.items() if not name.startswith(SERVER)})
        if install:
            self.install(state)
        return state

    def install(self, state: BucketState) -> None:
        """Make ``state`` the owner of its parameters (dropping buckets left with none)."""
        self._buckets[state.params] = state
        members = set(state.params)
        self._layout = [unit for unit in self._layout if members.isdisjoint(unit)]
        for p in state.params:
            self._owner[p] = state.params
            self._pending.pop(p, None)
            self._rebuild.discard(p)
        live = set(self._owner.values())
        for key in [k for k in self._buckets if k not in live]:
            del self._buckets[key]  # every parameter it held now lives in another bucket

    # -- the aggregate's recent moves (LAG-WK and SASG triggers) -----------------------------
    def measure_moves(self, state: BucketState) -> list[float]:
        """||g slice||^2 per parameter of the bucket's new g (the direction of the coming step),
        for the history that ``Round.moves`` reads (empty unless the mechanism's trigger reads it).
        Measured where g was written: in the hook's callback, on its CUDA stream."""
        if not self.history.window:
            return []
        return [self.history.measure(g) for g in state.estimate.split(state.sizes)]

    def record_moves(self, state: BucketState, norms: list[float]) -> None:
        """Append ``measure_moves``' norms to the per-parameter history (at the round's commit)."""
        for p, norm in zip(state.params, norms):
            self.history.append(p, norm)

    def settle(self) -> None:
        """Wait until every round of the last iteration committed or rolled back (when DDP
        raised at a failed bucket, later buckets may still be completing)."""
        if self.transaction is not None:
            self.transaction.wait()

    def bypass(self, grad: Tensor, first_bucket: bool) -> bool:
        """Whether this bucket goes by DDP's plain allreduce (``dense_when_faster``: the probe's
        dense iterations, or every iteration once dense was chosen; the choice drops the memories)."""
        if self.link is None:
            return False
        undecided = self.link.dense is None
        dense = self.link.bypass(self.iteration, self.warmup_steps, first_bucket, self.group, grad.device, self.stats)
        if undecided and self.link.dense:
            self._buckets.clear()
            self._owner.clear()
        return dense

    def backward_ended(self) -> None:
        """The last bucket of this iteration was issued (``link_choice``'s clock; before the
        iteration's completion can be reported)."""
        if self.link is not None:
            self.link.ended(self.iteration)

    def end_iteration(self) -> None:
        self.iteration += 1
        self.stats.steps = self.iteration
        if self.log_every and self.iteration % self.log_every == 0:
            rank = dist.get_rank() if dist.is_initialized() else 0
            logger.info("threepc rank %d %r iteration %d: %s", rank, self.mechanism, self.iteration,
                        self.stats.summary())

    # -- checkpoints ----------------------------------------------------------------------
    def _require_names(self, what: str) -> dict[int, str]:
        if self._names is None:
            raise RuntimeError(f"{what} keys memories by parameter name: build the state with "
                               "ThreePCState(..., model=ddp_model) or call state.bind(ddp_model) first")
        return self._names

    def state_dict(self) -> dict[str, object]:
        """This rank's memories per parameter name, the iteration counter, the statistics and the
        compression units (``layout``).

        Resuming bit for bit: each rank saves its own ``state_dict()`` beside the model's and the
        optimizer's (``torch.save(..., f"ckpt.{rank}.pt")``: worker memories differ per rank),
        and after a restart each rank builds its model, DDP wrapper (same ``bucket_cap_mb``,
        ``static_graph``, ``gradient_as_bucket_view``) and state, then loads its own file
        before the first forward. Another rank's file, on as many ranks, fails the first round's
        configuration check on every rank (``rank`` is saved)."""
        names = self._require_names("state_dict()")
        self.resolve(final=False)
        held = self.parameter_memory()  # after the last iteration settled: it may set or clear local_failure
        if self.local_failure is not None:
            raise ValueError(f"state_dict() refused: this rank's hook state differs from the other ranks' ("
                             f"{self.local_failure}); saving it would resume the divergence")
        memory = {names[p]: {k: self._in_order(t, p, logical).clone() for k, t in s.items()} for p, s in held.items()}
        return {"mechanism": self.mechanism.checkpoint_name(), "iteration": self.iteration, "order": "logical",
                "world_size": self.world_size(), "rank": self.rank(),
                "rebuild": sorted(names[p] for p in self._rebuild), "stats": self.stats.state_dict(), "memory": memory,
                "rate": self._last_rate(),
                "moves": {names[p]: list(h) for p, h in self.history.norms.items()},
                "layout": [[names[p] for p in unit] for unit in (*self._buckets, *self._layout)]}

    def _last_rate(self) -> float | None:
        """The learning rate the error feedback last read (``EF14.carry``; every worker reads the
        same), from a live worker or, before any round since a load, the one loaded: a resume
        carries the error from it."""
        for worker in (*(b.worker for b in self._buckets.values()), self.mechanism):
            rate = getattr(getattr(worker, "inner", worker), "last_rate", None)
            if rate is not None:
                return rate
        return None

    def _in_order(self, t: Tensor, p: int, convert: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        """A parameter's memory slice ``t`` converted between its bucket's order and row-major
        (``memory_order``); as is for a parameter this state does not know."""
        param = self._params.get(p)
        return convert(t, param) if param is not None and t.numel() == param.numel() else t

    def parameter_memory(self) -> dict[int, dict[str, Tensor]]:
        """Every parameter's (by id) slices of its bucket's memory, or of a loaded checkpoint's
        not yet in a bucket: live views, once the last iteration settled."""
        self.settle()
        memory = dict(self._pending)
        for state in self._buckets.values():
            memory.update(state.slices())
        return memory

    def _mismatch_hint(self, saved: str) -> str:
        """What to change when a checkpoint of ``saved``'s mechanism does not load into this state."""
        adam_mode = "AdamNormalized("
        if "betas=" in saved:
            return (" (this checkpoint names Adam's betas: it is from before threepc's Adam mode sent momentum, and "
                    "cannot resume this hook; load the model's and the optimizer's states and start the hook afresh)")
        if saved.startswith(adam_mode) and self.deferred is not None:
            return (" (a checkpoint of the Adam mode, which register(ddp) takes when it finds the Adam or AdamW that "
                    "holds the model's parameters: build the optimizer before loading the hook's state, or pass it: "
                    "register(ddp, optimizer=opt))")
        corrected, running = "MomentumCorrectedEF14(", self.mechanism.checkpoint_name()
        if saved.startswith(corrected) and not running.startswith(corrected):
            return (" (a checkpoint of momentum correction, which register(ddp) takes when it finds the momentum SGD "
                    "that holds the model's parameters: build the optimizer before loading the hook's state, or pass "
                    "it: register(ddp, optimizer=sgd))")
        if running.startswith(corrected) and saved.startswith("EF14("):
            return (" (this state corrects the momentum of the SGD register(ddp) found, its default under momentum "
                    "SGD after threepc 0.1.0; a checkpoint of the plain EF14 default resumes with register(ddp, "
                    "optimizer=None))")
        if self.mechanism.checkpoint_name().startswith(adam_mode) and not saved.startswith(adam_mode):
            return (" (this state runs the Adam mode, which register(ddp) takes when it finds an Adam or AdamW; a "
                    "checkpoint saved without it resumes with register(ddp, optimizer=None))")
        return ""

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore a ``state_dict`` (any bucket layout); buckets are assembled on first use."""
        names = self._require_names("load_state_dict()")
        self.resolve(final=False)
        if state["mechanism"] != self.mechanism.checkpoint_name():
            raise ValueError(f"the checkpoint was saved by {state['mechanism']}, but this state runs "
                             f"{self.mechanism.checkpoint_name()}: build the state with the same mechanism to resume"
                             + self._mismatch_hint(str(state["mechanism"])))
        by_name = {name: p for p, name in names.items()}
        state = _plain_names(state, by_name)
        unknown = sorted(set(state["memory"]) - set(by_name))
        if unknown:
            raise ValueError(f"the checkpoint holds parameters this model lacks: {unknown[:5]}; "
                             "load it into the model it was saved from")
        sizes = {name: param.numel() for name, param in ((n, self._params.get(p)) for n, p in by_name.items())
                 if param is not None}
        resized = sorted({f"{name} (saved {_entries(t)} entries, the model's has {sizes[name]})"
                          for name, s in state["memory"].items() for t in s.values()
                          if name in sizes and _entries(t) != sizes[name]})
        if resized:
            raise ValueError("the checkpoint's memories do not fit these parameters' sizes: " + ", ".join(resized[:5])
                             + "; load it into the model it was saved from (a resized layer needs a fresh hook state)")
        saved_n, saved_rank = state.get("world_size"), state.get("rank")
        self.settle()
        self.transaction = None
        self.iteration = int(state["iteration"])
        self.stats.load_state_dict(state["stats"])
        self._buckets.clear()
        self._owner.clear()
        order = bucket_order if state.get("order") == "logical" else (lambda t, p: t)  # older: the bucket's order
        self._pending = {by_name[name]: {k: self._in_order(t, by_name[name], order) for k, t in s.items()}
                         for name, s in state["memory"].items()}
        # Another set of ranks: an aggregate that outlives its round (EF21's g, moved by increments;
        # SASG's one message per rank) is not the mean of these ranks' memories, so each bucket's
        # first round is dense and rebuilds both from its gradients (a mechanism that carries memory,
        # the Adam mode, keeps its loaded moments). One rewritten every round (EF14's) loads as is.
        # A checkpoint saved before those rounds ran names the parameters still to rebuild.
        kept = {k[len(SERVER):] for s in state["memory"].values() for k in s if k.startswith(SERVER)}
        resized = saved_n is not None and saved_n != self.world_size() and bool(kept - self.mechanism.overwrites)
        self._rebuild = set(self._pending) if resized else {by_name[name] for name in state.get("rebuild", [])}
        self._layout = [tuple(by_name[name] for name in unit) for unit in state.get("layout", [])]
        self.history.load({by_name[name]: h for name, h in state.get("moves", {}).items()})
        # Another rank's file on as many ranks: its memories are that rank's (EF21's g_i, EF14's
        # error), so the aggregate would keep their offset for good; the configuration check raises.
        foreign = saved_n == self.world_size() and saved_rank is not None and saved_rank != self.rank()
        self._loaded_from = int(saved_rank) if foreign else None
        carrying = getattr(self.mechanism, "inner", self.mechanism)
        if hasattr(carrying, "last_rate"):  # every worker spawned from now on carries its error from it
            carrying.last_rate = state.get("rate")
        self.local_failure = self.failure = None  # every rank resumes from its checkpoint, checked again
        self.deferred = None  # the checkpoint's mechanism is the run's: register(ddp) looks no further
