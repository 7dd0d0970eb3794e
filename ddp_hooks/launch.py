"""Localhost gloo ranks for the demo, the benchmarks, the tests and your own experiments.

``run_ranks(fn, workers, *args)`` runs ``fn(rank, workers, *args)`` in ``workers`` spawned
processes joined in one gloo group (127.0.0.1, a free port, one intra-op thread each, as a rank
of a CPU cluster would run) and returns what each rank's ``fn`` returned.

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

import gc
import os
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(fn: Callable[..., object], workers: int, *args: object) -> list:
    """``fn(rank, workers, *args)`` on ``workers`` gloo ranks; the list of their return values
    (anything ``torch.save`` stores). ``fn`` and ``args`` travel to the ranks by pickle:
    module-level functions and ``functools.partial``, no lambdas."""
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_rank_main, args=(fn, workers, free_port(), out, args), nprocs=workers, join=True)
        return [torch.load(Path(out, f"{rank}.pt"), weights_only=False) for rank in range(workers)]


def _rank_main(rank: int, fn: Callable[..., object], workers: int, port: int, out: str,
               args: tuple[object, ...]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=workers)
    torch.save(fn(rank, workers, *args), Path(out, f"{rank}.pt"))
    gc.collect()  # DDP wrappers and hook states left in cycles go now, while the group is alive
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
