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
* at the first bucket of iteration a+COMPRESSED+1 every rank issues one all_gather of its mean
  compressed period and its warm-up wait (16 bytes a rank): how long the last warm-up round's
  collectives ran on after its backward ended, a dense allreduce's exposed time, which a dense
  step takes at least. Where the shortest wait over the ranks (that of the rank that ended its
  backward last: the others' hold their wait for it) is SLOW mean compressed steps or more,
  compression is kept with no dense iteration: a slow link pays nothing (at 400 Mbit/s on issue
  15's model a dense step's communication takes about 0.7 s, 9 compressed steps). SLOW is not
  CLEAR because of the first iteration's one-time costs: the first allreduce of 4 ranks on 2
  cores ran on for 1.8 compressed steps on an unshaped loopback where a dense step took 0.4
  (measured), and the warm-up's whole period, 2-3 compressed steps there at 2 ranks, is no
  bound at all.
* else plain allreduce from there on (the memories skip these iterations: the optimizer steps
  the exact mean gradient); the first dense period is that of the second dense iteration (the
  first's holds a compressed iteration's wait); at the first bucket of each later one the ranks
  exchange their mean periods the same way, and where the ranks' means differ by a factor of
  CLEAR or more, or after DENSE dense periods, every rank keeps the faster, the same decision
  everywhere. Dense: every later iteration is DDP's allreduce and nothing else (no checks; its
  bytes are counted as dense rounds), and the memories are dropped, so that a checkpoint holds
  none and a later compressed round starts from a dense warm-up round.

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

from .protocol import all_gather_single
from .stats import CommStats

logger = logging.getLogger("threepc")

COMPRESSED = 4  # compressed periods measured
DENSE = 3  # at most this many dense periods (one more dense iteration runs first: its period holds a compressed wait)
CLEAR = 1.2  # a ratio of the mean periods that decides after fewer
SLOW = 3.0  # a warm-up wait of this many compressed steps keeps compression with no dense iteration


class LinkChoice:
    """The measurement and the agreed choice of one hook state (module docstring)."""

    def __init__(self) -> None:
        self.begun: int | None = None  # the first iteration this process ran
        self.first: int | None = None  # ``a``: the first iteration this process may compress
        self.ends: dict[int, float] = {}  # iteration -> perf_counter() at its last bucket's hook call
        self.completed: dict[int, float] = {}  # warm-up iteration -> perf_counter() when its last bucket completed
        self.dense: bool | None = None  # the choice, once agreed
        self.periods: tuple[float, float] | None = None  # the ranks' mean periods (compressed, dense), in s
        self.warm = False  # whether the warm-up's wait decided (``periods[1]`` is then that wait)

    def bypass(self, iteration: int, warmup_steps: int, first_bucket: bool, group: dist.ProcessGroup,
               device: torch.device, stats: CommStats) -> bool:
        """Whether this bucket goes by plain allreduce: the probe's iterations, and every one once
        dense was chosen. At the first bucket of the probe's first iteration (the warm-up wait) and
        of each from its third on (the dense periods), agree on the periods (one blocking
        all_gather, on every rank) and maybe decide."""
        if self.first is None:
            self.begun, self.first = iteration, max(iteration, warmup_steps)
        if self.dense is None:
            start = self.first + COMPRESSED + 1
            if iteration < start:
                return False
            if first_bucket and iteration == start:
                self._agree(self._warm_wait(), group, device, stats, warm=True)
            elif first_bucket and iteration >= start + 2:
                self._agree(self._mean_period(range(start + 1, iteration)), group, device, stats,
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

    def done(self, iteration: int) -> None:
        """Every bucket of ``iteration`` completed (a callback's thread)."""
        if self.first is not None and iteration < self.first:
            self.completed[iteration] = time.perf_counter()

    def _warm_wait(self) -> float:
        """The shortest time a warm-up round's collectives ran after its backward ended (0: none)."""
        assert self.begun is not None and self.first is not None
        return min((max(0.0, self.completed[i] - self.ends[i]) for i in range(self.begun, self.first)
                    if i in self.completed and i in self.ends), default=0.0)

    def _agree(self, dense: float, group: dist.ProcessGroup, device: torch.device, stats: CommStats, *,
               warm: bool = False, last: bool = False) -> None:
        """Agree on the ranks' mean compressed period and ``dense`` (``warm``: the warm-up wait,
        the ranks' shortest, which decides only for compression; else the ranks' mean dense
        period, which decides when the two differ by CLEAR, or when it is the ``last``)."""
        assert self.first is not None
        mine = torch.tensor([self._mean_period(range(self.first + 1, self.first + COMPRESSED + 1)), dense],
                            dtype=torch.float64, device=device)
        every = mine.new_empty(group.size() * 2)
        all_gather_single(every, mine, group=group)
        width = mine.numel() * mine.element_size()
        stats.add_control("link_choice", width)
        stats.ring_all_gather(width, group.size())
        ranks = every.view(-1, 2).cpu()  # the same on every rank; inf (an iteration failed): that side loses
        # the warm-up wait of the rank that ended its backward last: the others' waits hold their wait for it
        # (the first iterations' one-time costs differ between ranks: 452 ms against 100 ms dense steps, 4 ranks)
        compressed, dense = float(ranks[:, 0].mean()), float(ranks[:, 1].min() if warm else ranks[:, 1].mean())
        if warm and dense < compressed * SLOW:
            return  # not clear from the warm-up: measure dense iterations
        if not warm and not last and compressed / CLEAR < dense < compressed * CLEAR:
            return  # not clear yet: one more dense period
        self.periods, self.dense, self.warm = (compressed, dense), dense < compressed and not warm, warm
        self.ends, self.completed = {}, {}
        logger.info("threepc: %s", self.summary())

    def summary(self) -> str:
        """The choice and the ranks' mean step times it was taken on (``measuring`` before)."""
        if self.dense is None or self.periods is None:
            return "measuring"
        compressed, dense = (p * 1e3 for p in self.periods)
        if self.warm:
            return (f"compressed, no dense iteration run (a step {compressed:.1f} ms compressed; the warm-up's dense "
                    f"allreduce ran {dense:.1f} ms after its backward)")
        return (f"{'dense: DDP' if self.dense else 'compressed: DDP'}'s allreduce measured "
                f"{'faster' if self.dense else 'slower'} (a step {compressed:.1f} ms compressed, {dense:.1f} ms dense)")
