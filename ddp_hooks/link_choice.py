"""Dense when it is faster (``register(ddp, ..., dense_when_faster=True)``): on a link fast
enough that compressing costs more time than it saves, the hook runs DDP's plain averaged
allreduce instead.

Compression pays when the link time it saves exceeds its own work (compress, decode, the
optimizer wrapper's passes). On an unshaped loopback it does not: the corrected default took
1.33x the step of DDP's allreduce on issue 15's 4.7M-parameter MLP, and at 400 Mbit/s 0.06x
(``benchmarks/results/overhead_all_hooks_4.7M_2026-12-07.md``, ``e2e_400mbit_fused_mc.md``).
Which side a training is on depends on the link, the model and the machine, so the hook
measures it. With ``a`` the first iteration that may compress (after the warm-up, or the first
this process runs after a resume):

* iterations a+1 .. a+COMPRESSED: compressed; each gives one period, the time between the ends
  of the backward passes of two consecutive iterations (the last bucket's hook call: the
  optimizer step, the forward and backward, and the communication the iteration waited for);
* at the first bucket of iteration a+COMPRESSED+1 every rank issues one all_reduce of its mean
  compressed period and its shortest warm-up period (16 bytes; the periods that end after a
  warm-up round, whose wait is a dense allreduce's, and which hold at most one compressed
  iteration's work), and every rank reads the ranks' means: a warm-up period longer than
  1 + CLEAR compressed ones means a dense step at least CLEAR times the compressed one, and
  compression is kept with no dense iteration (a slow link pays nothing);
* else plain allreduce from there on (the memories skip these iterations: the optimizer steps
  the exact mean gradient); the first dense period is that of the second dense iteration (the
  first's holds a compressed iteration's wait); at the first bucket of each later one the ranks
  agree on the mean periods the same way, and where they differ by a factor of CLEAR or more, or
  after DENSE dense periods, every rank keeps the faster, the same decision everywhere.
  Dense: every later iteration is DDP's allreduce and nothing else (no checks; its bytes are
  counted as dense rounds), and the memories are dropped, so that a checkpoint holds none and a
  later compressed round starts from a dense warm-up round.

The decision is taken once per process (a resumed training measures again). The Adam mode does
not take it: its step applies the hook's rounds and has no dense step of its own. During dense
iterations a non-finite gradient propagates as under DDP's allreduce (``nonfinite="raise"`` does
not apply).
"""
from __future__ import annotations

import logging
import statistics
import time

import torch
import torch.distributed as dist

logger = logging.getLogger("threepc")

COMPRESSED = 4  # compressed periods measured
DENSE = 3  # at most this many dense periods (one more dense iteration runs first: its period holds a compressed wait)
CLEAR = 1.2  # a ratio of the mean periods that decides after fewer


class LinkChoice:
    """The measurement and the agreed choice of one hook state (module docstring)."""

    def __init__(self) -> None:
        self.begun: int | None = None  # the first iteration this process ran
        self.first: int | None = None  # ``a``: the first iteration this process may compress
        self.ends: dict[int, float] = {}  # iteration -> perf_counter() at its last bucket's hook call
        self.dense: bool | None = None  # the choice, once agreed
        self.periods: tuple[float, float] | None = None  # the ranks' mean periods (compressed, dense), in s
        self.warm = False  # whether the warm-up's period decided (``periods[1]`` is then that bound)

    def bypass(self, iteration: int, warmup_steps: int, first_bucket: bool, group: dist.ProcessGroup,
               device: torch.device) -> bool:
        """Whether this bucket goes by plain allreduce: the probe's iterations, and every one once
        dense was chosen. At the first bucket of each probe iteration after the second, agree on
        the periods (one blocking all_reduce, on every rank) and maybe decide."""
        if self.first is None:
            self.begun, self.first = iteration, max(iteration, warmup_steps)
        if self.dense is None:
            start = self.first + COMPRESSED + 1
            if iteration < start:
                return False
            if first_bucket and iteration == start:
                self._agree(self._warm_period(), group, device, warm=True)
            elif first_bucket and iteration >= start + 2:
                self._agree(self._mean_period(range(start + 1, iteration)), group, device,
                            last=iteration - start - 1 >= DENSE)
            return self.dense is not False
        return self.dense

    def ended(self, iteration: int) -> None:
        """The last bucket of ``iteration`` was issued."""
        if self.dense is None:
            self.ends[iteration] = time.perf_counter()

    def _mean_period(self, ends: range) -> float:
        """The mean time between the ends of iterations i - 1 and i, i in ``ends``; inf where an
        iteration failed (it never ended)."""
        try:
            return statistics.fmean(self.ends[i] - self.ends[i - 1] for i in ends)
        except KeyError:
            return float("inf")

    def _warm_period(self) -> float:
        """The shortest period that ends after a warm-up round this process ran (0: none ran)."""
        assert self.begun is not None and self.first is not None
        return min((self._mean_period(range(i, i + 1)) for i in range(self.begun + 1, self.first + 1)), default=0.0)

    def _agree(self, dense: float, group: dist.ProcessGroup, device: torch.device, *, warm: bool = False,
               last: bool = False) -> None:
        """Agree on the ranks' mean compressed period and ``dense`` (``warm``: the warm-up bound,
        which decides only for compression; else the mean dense period, which decides when the
        two differ by CLEAR, or when it is the ``last``)."""
        assert self.first is not None
        compressed = self._mean_period(range(self.first + 1, self.first + COMPRESSED + 1))
        means = torch.tensor([compressed, dense], dtype=torch.float64, device=device)
        dist.all_reduce(means, group=group)  # inf (an iteration failed) on any rank: that side loses
        compressed, dense = (float(m) / group.size() for m in means.cpu())
        if warm and dense <= compressed * (1.0 + CLEAR):
            return  # not clear from the warm-up: measure dense iterations
        if not warm and not last and compressed / CLEAR < dense < compressed * CLEAR:
            return  # not clear yet: one more dense period
        self.periods, self.dense, self.ends, self.warm = (compressed, dense), dense < compressed and not warm, {}, warm
        logger.info("threepc: %s", self.summary())

    def summary(self) -> str:
        """The choice and the ranks' mean step times it was taken on (``measuring`` before)."""
        if self.dense is None or self.periods is None:
            return "measuring"
        compressed, dense = (p * 1e3 for p in self.periods)
        if self.warm:
            return (f"compressed, no dense iteration run (a step {compressed:.1f} ms compressed, {dense:.1f} ms after "
                    "the warm-up's dense allreduce)")
        return (f"{'dense: DDP' if self.dense else 'compressed: DDP'}'s allreduce measured "
                f"{'faster' if self.dense else 'slower'} (a step {compressed:.1f} ms compressed, {dense:.1f} ms dense)")
