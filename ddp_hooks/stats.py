"""Bytes on the wire, counted per rank."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class CommStats:
    """What this rank has sent, in bytes, by kind, against dense (allreduce) training.

    ``sent`` counts the bytes this rank contributes to collectives: compressed payload parts
    (e.g. ``values``, ``indices``), ``header`` (one int32 per rank and round when payloads may
    be empty or vary in size: the size, or a negative flag) and ``padding`` (fill up to the longest payload of the round),
    and ``dense`` for warm-up rounds. ``control`` counts the bytes of the hook's agreement
    between ranks: ``flags`` (two fp32 per round of fixed-size payloads: whether this rank saw
    a non-finite gradient, whether it failed) and ``checks`` (the configuration and replica
    checks' hashes); ``total_sent`` and the ratio include them. ``dense_equivalent`` is what the same rounds would send
    with a plain allreduce of the bucket (numel x bytes per gradient element). Link traffic of
    a ring adds a factor: all_gather moves (n - 1) x payload per rank, allreduce 2(n - 1)/n x
    dense, so at n ranks the link ratio is (n / 2) x the ratio reported here.
    """

    steps: int = 0
    compressed_rounds: int = 0  # bucket rounds after the warm-up
    dense_rounds: int = 0
    silent_rounds: int = 0  # compressed rounds in which this rank sent no payload (lazy triggers)
    skipped_rounds: int = 0  # compressed rounds in which no rank sent: no payload collective ran
    nonfinite_rounds: int = 0  # rounds some rank's gradient was not finite: skipped, memories untouched
    sent: dict[str, int] = field(default_factory=dict)
    collectives: dict[str, int] = field(default_factory=dict)  # payload collectives run, by protocol
    control: dict[str, int] = field(default_factory=dict)  # flags and checks, in bytes
    dense_equivalent: int = 0

    def add(self, kind: str, nbytes: int) -> None:
        self.sent[kind] = self.sent.get(kind, 0) + nbytes

    def add_control(self, kind: str, nbytes: int) -> None:
        self.control[kind] = self.control.get(kind, 0) + nbytes

    def ran(self, collective: str) -> None:
        self.collectives[collective] = self.collectives.get(collective, 0) + 1

    @property
    def total_sent(self) -> int:
        return sum(self.sent.values()) + sum(self.control.values())

    def summary(self) -> dict[str, object]:
        """Counts, bytes by kind, totals and the ratio sent / dense-equivalent."""
        total = self.total_sent
        return {
            "steps": self.steps,
            "compressed_rounds": self.compressed_rounds,
            "dense_rounds": self.dense_rounds,
            "skip_rate": self.silent_rounds / self.compressed_rounds if self.compressed_rounds else 0.0,
            "skipped_rounds": self.skipped_rounds,
            "nonfinite_rounds": self.nonfinite_rounds,
            "bytes_sent": dict(self.sent),
            "bytes_control": dict(self.control),
            "collectives": dict(self.collectives),
            "bytes_sent_total": total,
            "bytes_dense_equivalent": self.dense_equivalent,
            "fraction_of_dense": total / self.dense_equivalent if self.dense_equivalent else 0.0,
        }

    def state_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, object]) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, state.get(f.name, f.default_factory() if callable(f.default_factory) else f.default))
