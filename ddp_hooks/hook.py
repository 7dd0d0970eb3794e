"""The threepc DDP communication hook: state lookup -> mechanism step -> protocol exchange ->
aggregate.

Per bucket and iteration, on every rank (rank r is worker r of the mechanism), for each of the
bucket's compression units (the bucket itself, or the units a checkpoint or an earlier layout
defined when the bucket is exactly their union, ``ThreePCState.units``):

* dense round (warm-up iterations, or a unit whose parameters have no state yet):
  ``mechanism.init(grad)`` sets the worker memory and returns the fp32 gradient; the callback
  builds the aggregate state with ``mechanism.start`` (g = the mean gradient);
* compressed round: ``mechanism.step(grad)`` updates the local memory and returns the payload;
  the callback folds every rank's payload into the aggregate with ``mechanism.fold``;
* two-stage compressed round (``mechanism.two_stage``): ``step`` returns one payload per chunk
  (chunk j owned by rank j); ``protocol.TwoStage`` moves them to their owners, runs this rank's
  owner step ``mechanism.relay`` here, in the hook's thread, between its two stages (blocking
  on the first: that bucket's communication no longer overlaps the rest of backward), and
  all_gathers the owners' payloads; the callback decodes them with ``mechanism.collect``;
* with ``dense_when_faster``, the probe's dense iterations and, if dense was measured faster,
  every later one: DDP's own averaged allreduce of the bucket, no mechanism (``link_choice``).

Either way ``protocol.choose`` picks how the payload travels from what the mechanism declares
(summable, lazy, fixed or variable size), and the aggregate's ``"g"`` is the unit's result.
Every collective is issued here, in the hook's own thread and in the same order on every rank;
the ``.then()`` callback only decodes. (A collective issued from a callback hangs or
mismatches on gloo once a model has several buckets; torch's PowerSGD hook aborts on gloo for
this reason, pytorch/pytorch#58467.) The decisions that pick a round and a spec (iteration
count, bucket state present, shared coins) are the same on every rank.

Failures are agreed, never local. A rank whose gradient (or payload) is not finite, or whose
mechanism raised, sends a blank payload with its ``protocol.Flags`` (so does a rank whose
protocol failed to pack its payload: ``Protocol.guarded``); every rank reads the flags
from the same collective and either returns NaN for that bucket (``nonfinite="propagate"``:
GradScaler skips the whole step) or fails the future it returned to DDP with the same
``ThreePCError``. An iteration is a transaction (``_Iteration``): each round keeps a copy of
the worker memory it steps and of the aggregate it updates until every bucket of the iteration
has completed; then all rounds commit, or, if any round was flagged, all roll back, so that a
skipped step leaves every memory (and the history of moves) as it was. Errors reach DDP only
through the future (raised from ``backward()`` on every rank): an exception raised in the hook
itself would leave DDP's reducer unusable.

This module keeps real (not postponed) annotations: DDP checks that the hook's ``bucket``
parameter is annotated ``dist.GradBucket`` and its result ``Future[Tensor]``.
"""
import functools
import threading
import warnings
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor
from torch.futures import Future, collect_all

from compressors import GD, PartSpec, Payload, Round
from compressors.core.mechanism import all_finite
from compressors.core.memory import Memory, reusable

from . import protocol, wire
from .protocol import Flags
from .state import BucketState, ThreePCError, ThreePCState

GRAD_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def unsupported_dtype(found: str) -> str:
    """The error for gradients of another dtype (``found`` says where)."""
    return (f"threepc hooks compress float32, float16 and bfloat16 gradients; {found}. Train in one of those dtypes "
            "(e.g. model.float()) or use DDP's default allreduce")


def _shares(t: Tensor, other: Tensor) -> bool:
    """Whether ``t`` is a view of ``other``'s memory (a payload part that is the gradient itself)."""
    return t.untyped_storage().data_ptr() == other.untyped_storage().data_ptr()


def _blank(spec: list[PartSpec], numel: int, device: torch.device, sized: bool) -> Payload:
    """What a rank that skips its round sends: nothing (sized protocols), else zeros."""
    if sized:
        return Payload({}, numel)
    return Payload({p.name: torch.zeros(p.numel, dtype=p.dtype, device=device) for p in spec}, numel)


def _failed(error: BaseException) -> Future:
    """A future that fails with ``error`` the way a callback fails (DDP's reducer stays usable)."""
    done: Future = Future()
    done.set_result(None)

    def throw(_: Future) -> Tensor:
        raise error

    return done.then(throw)


class _Round:
    """One compression unit's round on this rank: the guarded mechanism call and its exchange."""

    def __init__(self, state: ThreePCState, params: list[Tensor], grad: Tensor, scale: float = 1.0) -> None:
        group, numel = state.group, grad.numel()
        self.state, self.params, self.grad, self.scale = state, params, grad, scale
        found = state.bucket_state(params) if state.iteration >= state.warmup_steps else None
        self.dense = found is None
        self.bucket: BucketState = state.new_bucket_state(params, install=False) if self.dense else found
        worker = self.worker = self.bucket.worker
        if self.dense:
            self.rnd = Round(state.iteration, group.rank(), group.size())
            spec, lazy = worker.init_spec(numel), False
            state.stats.dense_rounds += 1
        else:
            self.rnd = Round(state.iteration, group.rank(), group.size(), state.history.moves(self.bucket.params),
                             dict(self.bucket.server))
            spec, lazy = worker.spec(numel, self.rnd), worker.lazy  # before step(): a refused spec changes nothing
            state.stats.compressed_rounds += 1
            _warn_if_larger_than_dense(state, spec, grad)
        relay = None  # a two-stage mechanism: every rank owns a chunk and runs its step between the stages
        if not self.dense and worker.two_stage:
            relay = protocol.Relay([hi - lo for lo, hi in worker.chunks(numel, group.size())], self._relay)
            self.owned_spec = protocol.chunk_specs(spec, group.size())[group.rank()]
        self.relayed = relay is not None
        proto = protocol.choose(spec, summable=worker.summable(spec), lazy=lazy, reproducible=state.reproducible,
                                group=group, stats=state.stats, relay=relay)
        self.saved: Memory | None = None  # the worker memory before step()
        self.server: dict[str, Tensor] | None = None  # the aggregate before aggregate()
        self.refused = False  # some rank flagged the round
        self.moves: list[float] = []  # finish(): the new g's moves, recorded at the commit
        self.error: Exception | None = None
        self.local = ""  # what this rank saw (for the error message)
        flags = Flags()
        try:
            if state.local_failure is not None:  # its memories differ from the other ranks': flagged every round
                raise ThreePCError(state.local_failure)
            if not all_finite(grad):
                self.local, flags = self._nonfinite_params(), Flags(nonfinite=1)
            else:
                if not self.dense:  # copies of what step() may write in place, the rest by reference
                    written = worker.written_in_place
                    self.saved = type(worker.memory).of({k: t.clone() if written is None or k in written else t
                                                         for k, t in worker.memory.tensors().items()})
                work = grad if scale == 1.0 else grad.float().div(scale)  # the gradient's own units
                payload = worker.init(work, self.rnd) if self.dense else worker.step(work, self.rnd)
                if payload.parts:  # a lazy round may stay silent
                    wire.check(payload, spec)
                if not all_finite(*(t for t in payload.parts.values() if not _shares(t, work))):
                    self.local, flags = "its payload overflowed", Flags(nonfinite=1)
        except Exception as e:  # noqa: BLE001 - reported to every rank through the flags
            self.error, flags = e, Flags(error=1)
        if any(flags):
            self.restore()
            payload = _blank(spec, numel, grad.device, isinstance(proto, (protocol.Sized, protocol.TwoStage)))
            own = set(payload.parts)
        else:  # the round's fp32 gradient, which no memory holds, and scratch parts: the exchange may overwrite them
            held = [t for t in worker.memory.tensors().values() if _shares(t, work)]
            own = set(payload.scratch) | (set() if held else {k for k, t in payload.parts.items() if _shares(t, work)})
        try:  # the iteration's checks, before its first payload collective
            state.agreed()
        except ThreePCError:
            self.restore()
            raise
        self.exchange = proto.exchange(payload, spec, grad.device, flags, own)
        self.error = self.error or proto.failure  # packing failed here: this rank sent its error flag
        state.stats.dense_round(numel * grad.element_size(), group.size())

    def _relay(self, received: list[Payload]) -> tuple[Payload, Flags]:
        """This rank's step as the owner of its chunk (two-stage mechanisms), between the stages:
        its payload and flags. Guarded like ``step``: an exception or a non-finite result is a
        flag every rank reads from the second stage's header; the owner's error is written only
        when finite, and the round's rollback restores it with the rest of the memory."""
        empty = Payload({}, 0)
        try:
            payload = self.worker.relay(received, self.rnd)
            if payload is not None:
                wire.check(payload, self.owned_spec)
        except Exception as e:  # noqa: BLE001 - reported to every rank through the flags
            self.error = e
            return empty, Flags(error=1)
        if payload is None or not all_finite(*payload.parts.values()):
            self.local = "the mean of the chunk it owns (plus its owner error) overflowed"
            return empty, Flags(nonfinite=1)
        return payload, Flags()

    def _nonfinite_params(self) -> str:
        sizes = [p.numel() for p in self.params]
        bad = [self.state.name(id(p)) for p, g in zip(self.params, self.grad.split(sizes)) if not all_finite(g)]
        return f"non-finite gradient in {bad}"

    def restore(self) -> None:
        """Undo this round: the worker memory and the aggregate as before it (a dense round's
        new state is simply never installed)."""
        if self.saved is not None:
            self.worker.memory = self.saved
        if self.server is not None:
            self.bucket.server = self.server
        self.saved = self.server = None

    def installed_anyway(self) -> None:
        """Install a dense round that failed on this rank alone (``local_failure``), as the other
        ranks installed theirs, so that this rank's next rounds issue the same collectives (and
        flag the failure); its aggregate is zeros: this rank decodes no round any more."""
        if not self.bucket.server or "g" not in self.bucket.server:
            self.bucket.server = {"g": torch.zeros(self.grad.numel(), dtype=torch.float32, device=self.grad.device)}
        self.state.install(self.bucket)

    def commit(self) -> None:
        """Keep this round (every round of the iteration succeeded on every rank). The aggregate
        it replaced is free: the next round writes its entries there (``BucketState.spare``)."""
        if self.dense:
            self.state.install(self.bucket)
        else:
            self.bucket.compressed += 1
        self.state.record_moves(self.bucket, self.moves)
        if self.server is not None:  # every entry: a round holds old and new at once in any case
            self.bucket.spare = {k: t for k, t in self.server.items() if t.dtype == torch.float32}
        self.saved = self.server = None

    def finish(self) -> tuple[Tensor, float] | str:
        """After the exchange: the unit's new g and the factor the bucket takes it times, or NaN
        for a skipped round, or the message of a failure every rank raises."""
        payloads, flags = self.exchange.read()
        if any(flags):
            self.refused = True
            self.restore()
            return self._refuse(flags)
        if self.dense:
            self.bucket.server = self.worker.begin(payloads, self.rnd)
        elif payloads is not None:  # None: every rank stayed silent, g is unchanged
            self.server = self.bucket.server  # kept as it is for a rollback; the round writes a new one
            self.bucket.server = {k: self._fresh(k, t) for k, t in self.server.items()}
            if self.relayed:  # the owners' payloads: every rank decodes g from them
                self.worker.collect(self.bucket.server, payloads, self.rnd)
            else:
                self.worker.fold(self.bucket.server, payloads, self.rnd)
        g = self.bucket.server["g"]
        self.moves = self.state.measure_moves(self.bucket)  # here, not at the commit: g's stream (see _when_all)
        return g, self.worker.presented(g) * self.scale  # the scale: what GradScaler.unscale_ expects

    def _fresh(self, key: str, old: Tensor) -> Tensor:
        """The tensor a round writes aggregate entry ``key`` into: that of the round before last
        (``BucketState.spare``: fp32 entries) or a new one, holding ``old`` unless the mechanism
        overwrites the entry."""
        if old.dtype != torch.float32:
            return old.clone()
        fresh = reusable(self.bucket.spare.get(key), old.numel(), old.device, busy=(old,)).view_as(old)
        return fresh if key in self.worker.overwrites else fresh.copy_(old)

    def _refuse(self, flags: Flags) -> tuple[Tensor, float] | str:
        state, n = self.state, self.state.group.size()
        where = (f"in iteration {self.rnd.t}, in the bucket holding {[state.name(id(p)) for p in self.params]} "
                 f"(rank {state.group.rank()} of {n}): ")
        if flags.error:
            mine = (f"this rank raised {type(self.error).__name__}: {self.error}" if self.error is not None
                    else "this rank did not fail; see the failing rank's error (if it says its decoding failed, "
                    "every rank loads the checkpoint it saved before)")
            return f"threepc hook failed on {flags.error} of {n} ranks {where}{mine}"
        mine = f"; this rank: {self.local}" if self.local else ""
        if state.nonfinite == "raise":
            return (f"threepc: non-finite gradient on {flags.nonfinite} of {n} ranks {where}memories untouched"
                    f"{mine} (nonfinite='raise')")
        state.stats.nonfinite_rounds += 1
        return torch.full_like(self.grad, float("nan"), dtype=torch.float32), 1.0


class _Iteration:
    """The rounds of one iteration: committed together once every bucket completed, or all
    rolled back if any round failed or was flagged on any rank."""

    def __init__(self, scale: float, done: Callable[[], None] | None = None) -> None:
        self.scale = scale  # the loss scale of this backward pass (ThreePCState.scaler; else 1)
        self.done = done  # called once every bucket completed (link_choice's timing)
        self.rounds: list[_Round] = []
        self.futures: list[Future] = []
        self.pending, self.closed, self.failed = 0, False, False
        self.local = False  # decoding raised on this rank alone (hook._failed_locally)
        self.lock = threading.Lock()

    def add(self, rounds: list[_Round]) -> None:
        """A bucket's rounds, issued; ``settle`` follows when the bucket completes."""
        with self.lock:
            self.rounds += rounds
            self.pending += 1

    def wait(self) -> None:
        """Until every bucket settled (DDP stops waiting at the first bucket that raised);
        never from a callback."""
        for f in self.futures:
            try:
                f.wait()
            except Exception:  # noqa: BLE001, S110 - DDP has raised it already
                pass

    def close(self) -> None:
        """The last bucket of the iteration was issued."""
        with self.lock:
            self.closed = True
            self._end(False)

    def settle(self, failed: bool) -> None:
        """A bucket completed (``failed``: one of its rounds was refused or raised)."""
        with self.lock:
            self.pending -= 1
            self._end(failed)

    def _end(self, failed: bool) -> None:
        self.failed |= failed
        if self.closed and self.pending == 0:
            if self.done is not None:
                self.done()
            # decoding failed here alone (``local``): the other ranks kept the iteration unless some round of it
            # was refused by flags, which every rank read; then every rank rolled it back, and nothing differs
            kept_elsewhere = self.local and not any(r.refused for r in self.rounds)
            for r in self.rounds:
                r.restore() if self.failed else r.commit()
                if kept_elsewhere and r.dense:  # so that the next rounds issue the others' collectives, flagged
                    r.installed_anyway()
            if self.local and not kept_elsewhere:
                self.rounds[0].state.local_failure = None
            if self.rounds and not self.failed:
                self.rounds[0].state.committed_iterations += 1
            self.rounds = []


SPARSE_GRADIENTS = ("threepc hooks compress dense gradients, and this DDP model produces sparse ones "
                    "(nn.Embedding or nn.EmbeddingBag with sparse=True): build those modules with sparse=False, or "
                    "keep them out of the compressed model and use DDP's default allreduce for it")


def _warn_if_larger_than_dense(state: ThreePCState, spec: list[PartSpec], grad: Tensor) -> None:
    """Warn once per unit size when a payload and its flags (``protocol.FLAGS``, 8 bytes a round)
    outweigh the dense gradient (e.g. Top-K with k near the bucket size: values + indices; any
    payload on a bucket of a few entries); the statistics count what is really sent."""
    sent = sum(p.numel * p.dtype.itemsize for p in [*spec, protocol.FLAGS] if p.numel is not None)
    dense = grad.numel() * grad.element_size()
    if sent > dense and grad.numel() not in state.warned:
        state.warned.add(grad.numel())
        fix = ("gd sends fp32 values: DDP's own allreduce sends the bucket in its dtype"
               if isinstance(getattr(state.mechanism, "inner", state.mechanism), GD) else  # the Adam mode's too
               "choose a smaller ratio/k or larger buckets (bucket_cap_mb), or leave a model this small to DDP's "
               "own allreduce (no hook)")
        warnings.warn(f"threepc {state.mechanism!r} sends {sent} bytes (payload and flags) for a bucket of "
                      f"{grad.numel()} {grad.dtype} entries, more than its dense allreduce ({dense} bytes): {fix}",
                      RuntimeWarning, stacklevel=2)


def threepc_hook(state: ThreePCState, bucket: dist.GradBucket) -> Future[Tensor]:
    """Compress a DDP bucket with ``state.mechanism``.

    Example::

        >>> state = ThreePCState(EF21(TopK(ratio=0.01)), model=ddp_model)
        >>> ddp_model.register_comm_hook(state, threepc_hook)
    """
    grad, params = bucket.buffer(), bucket.parameters()
    if state.link is not None and state.link.dense:  # dense_when_faster chose DDP's allreduce: nothing else runs
        return _plain(state, grad, bucket.is_last())
    iteration = state.transaction
    if not isinstance(iteration, _Iteration) or iteration.closed:
        state.settle()  # the last iteration's rounds, if DDP raised before they all completed
        timing = state.link is not None and state.link.dense is None
        iteration = state.transaction = _Iteration(state.loss_scale(),
                                                   functools.partial(state.link.done, state.iteration) if timing else None)
    try:
        if grad.layout != torch.strided:  # every rank's DDP has the same sparse buckets: all raise here
            raise TypeError(SPARSE_GRADIENTS)
        state.resolve()  # register(ddp)'s look for the optimizer (optimizer_lookup), before the configuration check
        state.check(grad, params, first=bucket.index() == 0)
        if grad.dtype not in GRAD_DTYPES:
            raise TypeError(unsupported_dtype(f"this bucket holds {grad.dtype}"))
        if state.bypass(grad, first_bucket=bucket.index() == 0):  # dense_when_faster's probe: DDP's allreduce
            state.agreed()
            future = _plain(state, grad, bucket.is_last())
            iteration.futures.append(future)
            if bucket.is_last():
                iteration.close()
            return future
        views = dict(zip((id(p) for p in params), grad.split([p.numel() for p in params])))
        by_id = {id(p): p for p in params}
        units = state.units(params)
        whole = len(units) == 1 and units[0] == tuple(views)
        rounds = [_Round(state, params, grad, iteration.scale) if whole else
                  _Round(state, [by_id[p] for p in unit], torch.cat([views[p] for p in unit]), iteration.scale)
                  for unit in units]
    except Exception as e:  # noqa: BLE001 - raised from backward(), never from the autograd hook itself
        state.last_error = e
        rounds, future = [], _failed(e)
        iteration.add(rounds)
        iteration.settle(failed=True)
    else:
        iteration.add(rounds)  # before the callback can settle it
        future = _when_all([r.exchange.future for r in rounds], grad.device,
                           lambda fut: _decode(fut, rounds, iteration, grad, views, whole))
    iteration.futures.append(future)
    if bucket.is_last():
        if rounds:
            state.backward_ended()
        iteration.close()
        if rounds:
            state.end_iteration()
    return future


def _plain(state: ThreePCState, grad: Tensor, last: bool) -> Future[Tensor]:
    """DDP's own averaged allreduce of the bucket (``link_choice``); the iteration ends with its last bucket."""
    future = protocol.plain_allreduce(grad, state.group, state.stats)
    if last:
        state.backward_ended()
        state.end_iteration()
    return future


def _when_all(futures: list[Future], device: torch.device,
              decode: Callable[[Future], Tensor]) -> Future[Tensor]:
    """``decode(collected)`` in a ``.then()`` callback once every exchange completed.

    On a GPU the callback runs behind a CUDA-aware future: the ``.then()`` of a future with
    devices runs on a stream of the pool and its result records CUDA events, which DDP's stream
    waits for (``Future.wait``); torch's ``collect_all`` has no devices, and would leave DDP reading
    the result while it is written. ``decode`` makes its stream wait for every collective
    (``_synchronize``: a callback's stream waited only for the future it follows).
    """
    decode = _Once(decode)
    collected = collect_all(futures)
    if device.type != "cuda":
        return collected.then(decode)
    gate: Future = Future(devices=[device])
    collected.then(lambda _: gate.set_result(None))

    def on_device(_: Future) -> Tensor:
        with torch.cuda.device(device):  # the callback's thread may have another current device
            return decode(collected)

    return gate.then(on_device)


class _Once:
    """A ``.then()`` callback that lets go of what it holds before it returns.

    torch frees a callback on the thread that ran it (a gloo worker) after the future it completes
    has woken the thread waiting in ``backward()``. A callback still holding the bucket's rounds
    (the state, the process group) could then drop the group's last reference there, if the training
    thread has already dropped the model and destroyed the group (``train(); destroy_process_group()``
    right after the last backward): ``~ProcessGroupGloo`` joins its own worker and the process aborts
    ("terminate ... Resource deadlock avoided"). Released here, those objects are freed inside the
    call, while the waiting thread still holds them.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Future], Tensor]) -> None:
        self.fn: Callable[[Future], Tensor] = fn

    def __call__(self, fut: Future) -> Tensor:
        fn, self.fn = self.fn, None  # type: ignore[assignment] - once, by torch
        return fn(fut)


def _synchronize(future: Future) -> None:
    """Re-raise a failed collective under ``future``; on a GPU the current stream waits for each
    one's copies (``Future.wait``; it returns at once, as every future here has completed)."""
    value = future.wait()
    for inner in value if isinstance(value, list) else ():
        if isinstance(inner, torch._C.Future):  # collect_all's and get_future()'s: not torch.futures.Future
            _synchronize(inner)


def _decode(fut: Future, rounds: list[_Round], iteration: _Iteration, grad: Tensor, views: dict[int, Tensor],
            whole: bool) -> Tensor:
    """The bucket's result, once its exchanges (collected in ``fut``) completed."""
    completed, state = False, rounds[0].state
    try:
        try:
            _synchronize(fut)
        except Exception as e:
            state.last_error = e
            raise
        results, failed = [], None
        for r in rounds:  # every round reads its flags, after one raised too (_Iteration._end)
            try:
                results.append(r.finish())
            except Exception as e:  # noqa: BLE001 - on this rank alone: the others decoded the same payloads
                failed = failed or e
        if failed is not None:
            iteration.local = True
            raise _failed_locally(rounds[0], failed) from failed
        completed = True
    finally:
        iteration.settle(not completed or any(r.refused for r in rounds))
    failures = [r for r in results if isinstance(r, str)]
    if failures:
        error = state.last_error = ThreePCError("; ".join(failures))
        raise error
    if whole:
        g, factor = results[0]
        if factor == 1.0 and g.dtype == grad.dtype:  # DDP copies the result into the .grad tensors itself
            return g.view_as(grad)
        return _write(grad, g.view_as(grad), factor)
    for r, (g, factor) in zip(rounds, results):
        for p, part in zip(r.params, g.split([p.numel() for p in r.params])):
            _write(views[id(p)], part.view_as(views[id(p)]), factor)
    return grad


def _failed_locally(round_: _Round, error: Exception) -> ThreePCError:
    """Decoding raised on this rank (an out-of-memory error, say) after the round's collectives.
    Its state records it (``local_failure``): unless some round of the iteration was refused by
    flags (every rank then rolls the iteration back, and ``_Iteration._end`` clears it), the other
    ranks kept the iteration, this rank's memories and aggregate differ from theirs, and it flags
    every later round, which every rank raises, until every rank loads a checkpoint."""
    state = round_.state
    state.local_failure = (f"decoding failed on rank {state.group.rank()} in iteration {round_.rnd.t} "
                           f"({type(error).__name__}: {error}); unless every rank refused that iteration, the others "
                           "kept it, so this rank's memories and aggregate differ from theirs for good. Restore every "
                           "rank from a checkpoint saved before (model, optimizer and state.load_state_dict)")
    state.last_error = ThreePCError(state.local_failure)
    return state.last_error


def _write(out: Tensor, g: Tensor, factor: float) -> Tensor:
    """``out`` = ``g`` times ``factor``, in one pass when the dtypes agree."""
    if factor == 1.0:
        return out.copy_(g)
    if out.dtype == g.dtype:
        return torch.mul(g, factor, out=out)
    return out.copy_(g * factor)
