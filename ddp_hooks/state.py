"""Per-rank state of a threepc hook: one mechanism instance and one estimate per bucket.

Buckets are identified by the parameters they hold, never by ``bucket.index()``: DDP rebuilds
its buckets after the first iteration, and a new DDP wrapper (other ``bucket_cap_mb``) groups
parameters differently. All memories are per-coordinate, so a bucket's state is the
concatenation of its parameters' slices: a bucket that appears after a rebuild, or after
``load_state_dict``, is assembled from the slices of the buckets (or checkpoint) that held its
parameters. Only a bucket whose parameters have no state at all runs a dense warm-up round.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from compressors import Mechanism, Round
from compressors.core.rounds import MoveHistory

from .stats import CommStats

logger = logging.getLogger("threepc")

SERVER = "server."  # prefix of the aggregate state (its "g" and any more) beside the worker memory
ESTIMATE = SERVER + "g"


@dataclass
class BucketState:
    """One bucket on one rank: its parameters, the worker mechanism and this rank's replica of
    the aggregate state (``server["g"]`` is the estimate g)."""

    params: tuple[int, ...]  # id() of each parameter, in bucket order
    sizes: tuple[int, ...]
    worker: Mechanism
    server: dict[str, Tensor] | None = None  # fp32, set by the first dense round's callback

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

    Register it with ``ddp.register_comm_hook(state, threepc_hook)``.
    """

    __slots__ = ("mechanism", "process_group", "warmup_steps", "log_every", "reproducible", "iteration", "stats",
                 "_buckets", "_owner", "_pending", "_names", "history")

    def __init__(self, mechanism: Mechanism, *, process_group: dist.ProcessGroup | None = None,
                 warmup_steps: int = 1, log_every: int = 0, model: nn.Module | None = None,
                 reproducible: bool = False) -> None:
        for name, value, low in (("warmup_steps", warmup_steps, 1), ("log_every", log_every, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low} (warmup_steps >= 1: DDP rebuilds its buckets "
                                 f"after the first iteration), got {value!r}")
        try:  # fail at registration, on every rank, for mechanisms DDP cannot run
            mechanism.spec(1 << 10, Round(1, 0, 2))
        except NotImplementedError as e:
            raise ValueError(f"{mechanism!r} cannot run as a DDP hook: {e}") from None
        self.mechanism = mechanism
        self.process_group = process_group
        self.warmup_steps = warmup_steps
        self.log_every = log_every
        self.reproducible = reproducible
        self.iteration = 0
        self.stats = CommStats()
        self._buckets: dict[tuple[int, ...], BucketState] = {}
        self._owner: dict[int, tuple[int, ...]] = {}  # parameter id -> key of the bucket holding it
        self._pending: dict[int, dict[str, Tensor]] = {}  # loaded slices not yet in a bucket
        self._names: dict[int, str] | None = None
        self.history = MoveHistory(mechanism.window)  # per parameter id: ||g slice||^2, most recent first
        if model is not None:
            self.bind(model)
            if process_group is None:
                self.process_group = getattr(model, "process_group", None)  # the DDP model's own group

    def bind(self, model: nn.Module) -> None:
        """Learn parameter names (for checkpoints) from ``model`` or its DDP wrapper."""
        module = getattr(model, "module", model)
        self._names = {id(p): name for name, p in module.named_parameters()}

    @property
    def group(self) -> dist.ProcessGroup:
        return self.process_group if self.process_group is not None else dist.group.WORLD

    # -- buckets --------------------------------------------------------------------------
    @property
    def buckets(self) -> list[BucketState]:
        """The live bucket states (one per bucket of the current layout)."""
        return list(self._buckets.values())

    def bucket_state(self, params: list[Tensor]) -> BucketState | None:
        """The state of the bucket holding ``params``, assembled from parameter slices if it is
        new; None if some parameter has no state yet (the bucket then needs a dense round)."""
        key = tuple(id(p) for p in params)
        found = self._buckets.get(key)
        if found is not None:
            return found
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
        state = BucketState(key, tuple(p.numel() for p in params), self.mechanism.spawn())
        joined = {name: torch.cat([s[name] for s in slices]) for name in slices[0]}
        state.server = {name[len(SERVER):]: t for name, t in joined.items() if name.startswith(SERVER)}
        state.worker.memory = state.worker.memory_type.of(
            {name: t for name, t in joined.items() if not name.startswith(SERVER)})
        self._install(state)
        return state

    def new_bucket_state(self, params: list[Tensor]) -> BucketState:
        """A fresh state for the bucket holding ``params`` (its memory is set by a dense round)."""
        state = BucketState(tuple(id(p) for p in params), tuple(p.numel() for p in params), self.mechanism.spawn())
        self._install(state)
        return state

    def _install(self, state: BucketState) -> None:
        self._buckets[state.params] = state
        for p in state.params:
            self._owner[p] = state.params
            self._pending.pop(p, None)
        live = set(self._owner.values())
        for key in [k for k in self._buckets if k not in live]:
            del self._buckets[key]  # every parameter it held now lives in another bucket

    # -- the aggregate's recent moves (LAG-WK and SASG triggers) -----------------------------
    def record_moves(self, state: BucketState) -> None:
        """Append the bucket's new g (the direction of the coming step) to the per-parameter
        history (``Round.moves``; empty unless the mechanism's trigger reads it)."""
        if self.history.window:
            for p, g in zip(state.params, state.estimate.split(state.sizes)):
                self.history.record(p, g)

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
        """This rank's memories per parameter name, the iteration counter and the statistics."""
        names = self._require_names("state_dict()")
        memory: dict[str, dict[str, Tensor]] = {names[p]: {k: t.clone() for k, t in s.items()}
                                                for p, s in self._pending.items()}
        for state in self._buckets.values():
            for p, s in state.slices().items():
                memory[names[p]] = {k: t.clone() for k, t in s.items()}
        return {"mechanism": repr(self.mechanism), "iteration": self.iteration,
                "stats": self.stats.state_dict(), "memory": memory,
                "moves": {names[p]: list(h) for p, h in self.history.norms.items()}}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore a ``state_dict`` (any bucket layout); buckets are assembled on first use."""
        names = self._require_names("load_state_dict()")
        if state["mechanism"] != repr(self.mechanism):
            raise ValueError(f"the checkpoint was saved by {state['mechanism']}, but this state runs "
                             f"{self.mechanism!r}: build the state with the same mechanism to resume")
        by_name = {name: p for p, name in names.items()}
        unknown = sorted(set(state["memory"]) - set(by_name))
        if unknown:
            raise ValueError(f"the checkpoint holds parameters this model lacks: {unknown[:5]}; "
                             "load it into the model it was saved from")
        self.iteration = int(state["iteration"])
        self.stats.load_state_dict(state["stats"])
        self._buckets.clear()
        self._owner.clear()
        self._pending = {by_name[name]: dict(s) for name, s in state["memory"].items()}
        self.history.load({by_name[name]: h for name, h in state.get("moves", {}).items()})
