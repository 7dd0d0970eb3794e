"""Bytes on the wire, counted per rank."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class CommStats:
    """What this rank has sent, in bytes, by kind, against dense (allreduce) training.

    ``sent`` counts the bytes this rank contributes to collectives: compressed payload parts
    (e.g. ``values``, ``indices``), ``header`` (int32 sizes or negative flags: one per round when
    payloads may be empty or vary in size; in a two-stage round one in front of each of the n
    chunk payloads and of the owner's, plus a size header per stage when the chunks vary in
    size) and ``padding`` (fill up to the longest
    payload of the round), and ``dense`` for warm-up rounds. ``control`` counts the bytes of the
    hook's agreement between ranks: ``flags`` (two fp32 per round of fixed-size payloads: whether
    this rank saw a non-finite gradient, whether it failed), ``checks`` (the configuration and
    replica checks' hashes) and ``link_choice`` (``dense_when_faster``'s step times, 16 bytes a
    decision point); ``total_sent`` and the ratio include them. ``dense_equivalent`` is
    what the same rounds would send with a plain allreduce of the bucket (numel x bytes per
    gradient element).

    ``link_sent`` / ``link_received`` count what crosses this rank's links under the ring
    algorithms: an all_gather of w bytes per rank sends and receives (n - 1) w, an allreduce of
    D bytes 2 (n - 1) / n x D each way, an all_to_all of D bytes per rank (n - 1) / n x D each way. ``link_dense_equivalent`` is a dense ring allreduce of the
    same buckets, so ``link_fraction_of_dense`` grows with n for all_gathered payloads and not
    for allreduced ones.
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
    link_sent: int = 0
    link_received: int = 0
    link_dense_equivalent: int = 0

    def add(self, kind: str, nbytes: int) -> None:
        self.sent[kind] = self.sent.get(kind, 0) + nbytes

    def add_control(self, kind: str, nbytes: int) -> None:
        self.control[kind] = self.control.get(kind, 0) + nbytes

    def ran(self, collective: str) -> None:
        self.collectives[collective] = self.collectives.get(collective, 0) + 1

    def ring_all_gather(self, width: int, ranks: int) -> None:
        """Link bytes of a ring all_gather of ``width`` bytes from each of ``ranks`` ranks."""
        self.link_sent += (ranks - 1) * width
        self.link_received += (ranks - 1) * width

    def ring_all_to_all(self, nbytes: int, ranks: int) -> None:
        """Link bytes of an equal-split all_to_all of ``nbytes`` per rank: each rank keeps its own
        1/n of the buffer and sends the rest, (n - 1) / n x nbytes, and receives as much (pairwise
        exchanges; the ring-equivalent volume)."""
        moved = (ranks - 1) * nbytes // ranks
        self.link_sent += moved
        self.link_received += moved

    def ring_all_reduce(self, nbytes: int, ranks: int) -> None:
        """Link bytes of a ring allreduce (reduce-scatter + all_gather) of ``nbytes``."""
        moved = 2 * (ranks - 1) * nbytes // ranks
        self.link_sent += moved
        self.link_received += moved

    def dense_round(self, nbytes: int, ranks: int) -> None:
        """What a dense allreduce of this bucket would send, per rank and on the links."""
        self.dense_equivalent += nbytes
        self.link_dense_equivalent += 2 * (ranks - 1) * nbytes // ranks

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
            "link_bytes_sent": self.link_sent,
            "link_bytes_received": self.link_received,
            "link_fraction_of_dense": self.link_sent / self.link_dense_equivalent if self.link_dense_equivalent else 0.0,
        }

    def state_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, object]) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, state.get(f.name, f.default_factory() if callable(f.default_factory) else f.default))
