"""Localhost gloo ranks for the demo, the benchmarks, the tests and your own experiments.

``run_ranks(fn, workers, *args)`` runs ``fn(rank, workers, *args)`` in ``workers`` new
processes joined in one gloo group (127.0.0.1, a free port, one intra-op thread each, as a rank
of a CPU cluster would run) and returns what each rank's ``fn`` returned.

The ranks are forked from a forkserver that imported torch and threepc once (``PRELOAD``): on
the 2-core VM a call of two ranks that all-reduce one tensor takes 0.32-0.76 s (medians of four
runs), against 1.84-1.98 s when each rank is a fresh interpreter that imports torch ("spawn"),
2.4-6.0x (``pytest benchmarks/test_launch_speed.py``); a test suite or a benchmark that starts
hundreds of them pays the import once. A forked rank would inherit the server's
environment, stdout, stderr and random state (those of the call that started it); each rank
takes the caller's environment and fds 1 and 2 as they are at the call before it imports
``fn``'s module (from disk, as a spawned rank does), and reseeds torch and numpy
(``CallerContext``). Variables read at import (``IMPORT_TIME``: ``THREEPC_BACKEND``, torch's,
OpenMP's) cannot be taken that way: where one changed since the server started, or the platform
has no forkserver, the ranks are spawned. threepc itself stays as the server imported it, so
edits to its sources during a session reach the ranks only in a new process.

A rank ends with ``os._exit(0)`` once its result is saved and its process group destroyed: it
skips interpreter finalisation, where torch 2.13 now and then aborts rank 0 ("terminate called
without an active exception", SIGABRT) after the work is done. Measured on this machine with
a loop of ``benchmarks.demo.train(TrainConfig(hook=h, epochs=1))`` for h = ef21_sgdm and 3pcv5:
2 of about 90 two-rank runs aborted that way (and 2 of CI's 25 DDP runs once); in the run that
was instrumented, both ranks had written their results and returned from
``dist.destroy_process_group()`` before rank 0 died. With this ending: 0 of 50. pytorch #179291
describes the same exit-time race of gloo threads holding Python objects.
"""
from __future__ import annotations

import datetime
import gc
import os
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from multiprocessing import forkserver, reduction
from multiprocessing.context import get_spawning_popen
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RankFailure(NamedTuple):
    """A rank that raised (``error``: its traceback) or died (``exitcode``, e.g. -9: killed)."""

    rank: int
    exitcode: int | None
    error: str


PRELOAD = ("torch", "torch.distributed", "ddp_hooks")  # what the forkserver imports once for every rank
IMPORT_TIME = ("THREEPC_", "TORCH_", "PYTORCH_", "OMP_", "MKL_", "KMP_", "NUMBA_")  # variables read at import
_served: dict[str, str] | None = None  # the IMPORT_TIME variables the forkserver started under


def start_method() -> str:
    """"forkserver" (started with ``PRELOAD`` at the first call, its stdout and stderr /dev/null:
    a reader of the caller's pipes would wait for it), or "spawn" where there is none or the
    ``IMPORT_TIME`` variables differ from those the server started under."""
    global _served
    if "forkserver" not in mp.get_all_start_methods():
        return "spawn"
    now = {k: v for k, v in os.environ.items() if k.startswith(IMPORT_TIME)}
    if _served is None:
        mp.set_forkserver_preload(list(PRELOAD))
        sys.stdout.flush()
        sys.stderr.flush()
        saved, null = [os.dup(fd) for fd in (1, 2)], os.open(os.devnull, os.O_WRONLY)
        try:
            for fd in (1, 2):
                os.dup2(null, fd)
            forkserver.ensure_running()
        finally:
            for fd, old in zip((1, 2), saved):
                os.dup2(old, fd)
                os.close(old)
            os.close(null)
        _served = now
    return "forkserver" if now == _served else "spawn"


class CallerContext:
    """The caller's environment and fds 1 and 2 (stdout, stderr) at a rank's start: pickled only
    by the start (``reduction.DupFd`` hands the fds over with the process), and installed in the
    rank as it is unpickled (``_enter``), before the arguments after it import ``fn``'s module."""

    def __reduce__(self) -> tuple[Callable[..., None], tuple[object, ...]]:
        if get_spawning_popen() is None:
            raise TypeError("a CallerContext travels only with a process that run_ranks starts")
        return _enter, (dict(os.environ), reduction.DupFd(1), reduction.DupFd(2))


def _enter(environ: dict[str, str], stdout: object, stderr: object) -> None:
    """In a rank: the caller's stdout, stderr and environment, and fresh random states (a forked
    rank holds the server's, the same in every rank)."""
    sys.stdout.flush()
    sys.stderr.flush()
    for target, handed in ((1, stdout), (2, stderr)):
        fd = handed.detach()
        if fd != target:
            os.dup2(fd, target)
            os.close(fd)
    os.environ.clear()
    os.environ.update(environ)
    torch.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()


def run_ranks(fn: Callable[..., object], workers: int, *args: object, timeout: float | None = None) -> list:
    """``fn(rank, workers, *args)`` on ``workers`` gloo ranks; the list of their return values
    (anything ``torch.save`` stores). ``fn`` and ``args`` travel to the ranks by pickle:
    module-level functions and ``functools.partial``, no lambdas.

    ``timeout`` (seconds) bounds everything: it is the process group's timeout for every
    collective and the deadline of the whole run (ranks still running then are killed and
    ``TimeoutError`` names them); and every rank's outcome comes back, a rank that raised or
    died as a ``RankFailure`` (without: the first failure raises and ends the other ranks)."""
    with tempfile.TemporaryDirectory() as out:
        spawn_args = (CallerContext(), fn, workers, free_port(), out, args, timeout)
        method = start_method()
        if timeout is None:
            mp.start_processes(_rank_main, args=spawn_args, nprocs=workers, join=True, start_method=method)
            return [torch.load(Path(out, f"{rank}.pt"), weights_only=False) for rank in range(workers)]
        processes = mp.start_processes(_rank_main, args=spawn_args, nprocs=workers, join=False,
                                       start_method=method).processes
        deadline = time.monotonic() + timeout
        for p in processes:
            p.join(max(0.0, deadline - time.monotonic()))
        hung = [rank for rank, p in enumerate(processes) if p.is_alive()]
        for p in processes:
            if p.is_alive():
                p.kill()
            p.join()
        if hung:
            raise TimeoutError(f"ranks {hung} of {workers} still ran after {timeout} s (killed)")
        return [torch.load(Path(out, f"{rank}.pt"), weights_only=False) if Path(out, f"{rank}.pt").exists()
                else RankFailure(rank, p.exitcode, "") for rank, p in enumerate(processes)]


def _rank_main(rank: int, entered: None, fn: Callable[..., object], workers: int, port: int, out: str,
               args: tuple[object, ...], timeout: float | None) -> None:
    """``entered``: what unpickling a ``CallerContext`` left (it installed the caller's context)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=workers,
                            timeout=None if timeout is None else datetime.timedelta(seconds=timeout))
    try:
        result = fn(rank, workers, *args)
    except Exception:
        if timeout is None:
            raise
        torch.save(RankFailure(rank, 1, traceback.format_exc()), Path(out, f"{rank}.pt"))
        sys.stderr.flush()
        os._exit(1)  # at once: peers blocked in a collective see the connection close
    torch.save(result, Path(out, f"{rank}.pt"))
    gc.collect()  # DDP wrappers and hook states left in cycles go now, while the group is alive
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def loopback_tx_bytes() -> int:
    """The loopback tx counter of this process's network namespace (``/proc/net/dev`` is per
    namespace, ``/sys/class/net`` is not): inside a private one (``unshare -n``), the bytes that
    this machine's ranks put on their links."""
    for line in open("/proc/net/dev"):
        name, _, counters = line.partition(":")
        if name.strip() == "lo":
            return int(counters.split()[8])
    raise RuntimeError("no lo in /proc/net/dev")
