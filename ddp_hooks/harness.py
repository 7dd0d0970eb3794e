"""The simulation harness's logistic problem trained by real DDP ranks with a threepc hook.

Each of n gloo ranks holds one shard of ``FiniteSum`` (a9a rows) as ``WorkerLoss``, a
one-parameter module whose backward gives grad f_i(x) exactly; SGD with lr = gamma and
``foreach=False`` takes the harness's fp32 step. Used by tests/test_parity.py (DDP = simulation,
bit for bit) and benchmarks/lazy_table.py (bytes and skip rates of lazy mechanisms).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ddp_hooks.launch import run_ranks
from compressors import Mechanism
from compressors.sim.datasets import A9A, load_libsvm
from compressors.sim.problems import FiniteSum
from ddp_hooks import StaleGradients, ThreePCState, threepc_hook

_PROBLEMS: dict[tuple[int, int], FiniteSum] = {}


def problem(workers: int, rows: int) -> FiniteSum:
    """Logistic regression with the nonconvex regulariser on the first ``rows`` a9a rows."""
    if (workers, rows) not in _PROBLEMS:
        x, y = load_libsvm(A9A, n_features=123)
        _PROBLEMS[workers, rows] = FiniteSum.from_arrays(x[:rows], y[:rows], workers)
    return _PROBLEMS[workers, rows]


class WorkerLoss(nn.Module):
    """f_i as a module: x is its one parameter and forward() a loss whose gradient is exactly
    ``problem(workers, rows).worker_grads(x)[worker]``."""

    def __init__(self, workers: int, rows: int, worker: int) -> None:
        super().__init__()
        self.key, self.worker = (workers, rows), worker
        self.x = nn.Parameter(torch.zeros(problem(*self.key).dim))

    def forward(self) -> torch.Tensor:
        grad = problem(*self.key).worker_grads(self.x.detach())[self.worker]
        return (self.x * grad).sum()


# name -> (mechanism factory, stepsize in units of 1/L_-)
Cases = dict[str, tuple[Callable[[], Mechanism], float]]


def _worker(rank: int, workers: int, cases: Cases, rows: int, steps: int, reproducible: bool) -> dict:
    prob = problem(workers, rows)
    results = {}
    for name, (factory, step) in cases.items():
        module = WorkerLoss(workers, rows, rank)
        ddp = nn.parallel.DistributedDataParallel(module)
        state = ThreePCState(factory(), model=ddp, reproducible=reproducible)
        ddp.register_comm_hook(state, threepc_hook)
        stale = StaleGradients(ddp, state) if getattr(state.mechanism, "exact", False) else None
        opt = torch.optim.SGD(module.parameters(), lr=step / prob.l_minus, foreach=False)
        iterates, after_dense, total_sent = [module.x.detach().clone()], {}, [0]
        for t in range(steps + 1):
            opt.zero_grad()
            if stale is not None:
                stale.backward(lambda m: m())
            else:
                ddp().backward()
            opt.step()
            iterates.append(module.x.detach().clone())
            total_sent.append(state.stats.total_sent)
            if t == 0:
                after_dense = dict(state.stats.sent)
        sent = {kind: b - after_dense.get(kind, 0) for kind, b in state.stats.sent.items()}
        results[name] = {"iterates": torch.stack(iterates), "sent": sent, "total_sent": total_sent,
                         "stats": state.stats.summary()}
    return results


def run_ddp(workers: int, cases: Cases, *, rows: int, steps: int, reproducible: bool = True) -> list[dict]:
    """``steps`` compressed rounds (after the dense one) of every case on ``workers`` gloo ranks:
    per rank and case, the iterates x^0..x^{steps+1}, the bytes sent after the dense round by kind
    (``sent``), the bytes sent in all up to each iterate (``total_sent``, dense round included) and
    the hook's statistics."""
    return run_ranks(_worker, workers, cases, rows, steps, reproducible)
