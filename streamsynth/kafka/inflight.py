"""Records in flight: per-partition state and the bounded window over all partitions.

:class:`PartitionState` is one assigned partition: its :class:`OffsetTracker`, the
records (:class:`Job`) it has in flight, an ``idle`` event for the revoke drain, and
an explicit :class:`PartitionStatus`::

    ASSIGNED ──start_draining()──> DRAINING ──close()──> CLOSED
      fetch, process, commit         no fetch; in-flight    nothing marked done,
                                     records finish; the    nothing committed: the
                                     finished prefix is     partition belongs to
                                     committed              its next owner

:class:`InflightWindow` owns every partition's state and the one count of records
fetched and not finished (``count``; always the sum of the partitions' job sets,
which change only through the window). Of those, the ones whose outputs are all
handed to the sink and only await the broker's acknowledgement (``publishing``,
see :meth:`InflightWindow.published`) are bounded apart from the rest
(``working``): each part by ``max_inflight``. A broker round trip must not hold a
slot meant for work in the stages: where a stage answers at once (a cache replay)
the window otherwise fills with records waiting for acks while the worker idles.
When either part reaches ``max_inflight`` every assigned partition is paused; they
are resumed when both are down to ``resume_at`` (hysteresis, so the consumer does
not flap). The window decides; the worker applies the decision to the consumer, so
this module needs no Kafka client.

State-changing methods say who calls them ("Caller") and what they change
("Affects"), as aiokafka's ``subscription_state`` does.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from streamsynth.kafka.offsets import OffsetTracker, decode_finished

if TYPE_CHECKING:
    from collections.abc import Mapping

    from aiokafka import ConsumerRecord, TopicPartition

#: Resume paused partitions once the window is this full (hysteresis against flapping).
RESUME_FRACTION = 0.75


class PartitionStatus(enum.Enum):
    ASSIGNED = "assigned"
    DRAINING = "draining"
    CLOSED = "closed"


@dataclass(eq=False, slots=True)
class Job:
    """One input record on its way through the stages and the sink."""

    part: PartitionState
    msg: ConsumerRecord[bytes, bytes]
    #: Publications not acknowledged yet.
    remaining: int = 0
    task: asyncio.Task[None] | None = None
    #: Finished or abandoned: late acknowledgements are ignored.
    finished: bool = False
    #: An LLM request of this record was sent (set by :mod:`streamsynth.llm.onwire`).
    on_wire: bool = False
    #: Every output handed to the sink: counted in ``publishing``, not ``working``.
    published: bool = False


class PartitionState:
    """One assigned partition (one assignment generation). See the module doc."""

    __slots__ = ("idle", "jobs", "status", "tp", "tracker")

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.tracker = OffsetTracker()
        self.jobs: set[Job] = set()
        #: Set while no record of this partition is in flight (what a drain waits for).
        self.idle = asyncio.Event()
        self.idle.set()
        self.status = PartitionStatus.ASSIGNED

    @property
    def fetching(self) -> bool:
        """Whether fetched records of this partition are still taken on."""
        return self.status is PartitionStatus.ASSIGNED

    @property
    def closed(self) -> bool:
        return self.status is PartitionStatus.CLOSED

    def start_draining(self) -> None:
        """Caller: the window, on revoke or shutdown. Affects: status (ASSIGNED -> DRAINING)."""
        if self.status is PartitionStatus.ASSIGNED:
            self.status = PartitionStatus.DRAINING

    def to_commit(self) -> int | None:
        """The offset to commit now (None: nothing new, or the partition is closed)."""
        return None if self.closed else self.tracker.to_commit()

    def to_commit_with_metadata(self) -> tuple[int, str] | None:
        """(offset, metadata) to commit now (None: nothing new, or the partition is closed)."""
        return None if self.closed else self.tracker.to_commit_with_metadata()

    def committed(self, position: int, metadata: str = "") -> None:
        """Caller: the worker, after the broker accepted a commit (or on assignment, what
        it read). Affects: tracker.committed, tracker.committed_metadata."""
        self.tracker.committed = position
        self.tracker.committed_metadata = metadata


class InflightWindow:
    """Every assigned partition and the bounded count of records in flight."""

    def __init__(self, max_inflight: int, resume_fraction: float = RESUME_FRACTION) -> None:
        self.max_inflight = max_inflight
        self.resume_at = max(0, int(max_inflight * resume_fraction))
        self.parts: dict[TopicPartition, PartitionState] = {}
        #: Partitions paused for backpressure (a draining partition is paused outside it).
        self.paused: set[TopicPartition] = set()
        self.backpressure = False
        #: Records fetched and not finished, over all partitions.
        self.count = 0
        #: Of ``count``, those only awaiting the broker's acknowledgement.
        self.publishing = 0
        #: Set when both parts fall to ``resume_at``: the consume loop waits on it.
        self.room = asyncio.Event()

    @property
    def working(self) -> int:
        """Records in flight that are not yet (all) handed to the sink."""
        return self.count - self.publishing

    @property
    def free(self) -> int:
        return self.max_inflight - self.working

    @property
    def full(self) -> bool:
        return self.working >= self.max_inflight or self.publishing >= self.max_inflight

    def _note_room(self) -> None:
        if self.working <= self.resume_at and self.publishing <= self.resume_at:
            self.room.set()

    # -- assignment -----------------------------------------------------------------------
    def assign(self, tps: set[TopicPartition]) -> list[TopicPartition]:
        """Take on newly assigned partitions; returns those to pause (window full).

        Caller: the worker's ``on_assigned``. Affects: parts, paused.
        """
        for tp in tps:
            if tp not in self.parts:
                self.parts[tp] = PartitionState(tp)
        if not self.backpressure:
            return []
        fresh = [tp for tp in tps if tp not in self.paused]
        self.paused.update(fresh)
        return fresh

    def start_draining(self, parts: list[PartitionState]) -> list[TopicPartition]:
        """Stop taking on records of ``parts``; returns those the consumer must pause.

        Caller: the worker's release (revoke, shutdown). Affects: each part's status.
        The partitions are paused outside ``paused``, so a resume never wakes them.
        """
        for part in parts:
            part.start_draining()
        return [p.tp for p in parts if p.tp not in self.paused]

    def close(self, parts: list[PartitionState]) -> int:
        """Forget ``parts``, cancelling their unfinished records; returns how many.

        Caller: the worker's release, after the drain and the last commit.
        Affects: each part's status (-> CLOSED) and jobs, count, parts, paused, room.
        """
        abandoned = 0
        for part in parts:
            part.status = PartitionStatus.CLOSED
            abandoned += self._abandon(part)
            self.parts.pop(part.tp, None)
            self.paused.discard(part.tp)
        return abandoned

    # -- records --------------------------------------------------------------------------
    def fetching(self, tp: TopicPartition) -> PartitionState | None:
        """The partition's state if its fetched records are still ours to process."""
        part = self.parts.get(tp)
        return part if part is not None and part.fetching else None

    def admit(self, part: PartitionState, msg: ConsumerRecord[bytes, bytes]) -> Job | None:
        """Put a fetched record in flight; None when it is already in flight or done.

        Caller: the consume loop. Affects: part.tracker, part.jobs, part.idle, count.
        """
        if not part.tracker.add(msg.offset):
            return None  # fetched again in this generation
        job = Job(part, msg)
        part.jobs.add(job)
        part.idle.clear()
        self.count += 1
        return job

    def published(self, job: Job) -> None:
        """Every output of the record is with the sink: it now awaits only acknowledgements.

        Caller: the worker, after submitting the record's publications (not the
        exactly-once worker, whose records are held instead). Affects: job.published,
        publishing, room.
        """
        if job.finished or job.published:
            return
        job.published = True
        self.publishing += 1
        self._note_room()

    def finish(self, job: Job) -> None:
        """The record is done (every publication acknowledged): its offset may be committed.

        Caller: the worker's acknowledgement path. Affects: job.finished, part.jobs,
        part.tracker (unless closed), part.idle, count, publishing, room.
        """
        job.finished = True
        part = job.part
        part.jobs.discard(job)
        self.count -= 1
        if job.published:
            self.publishing -= 1
        if not part.closed:
            part.tracker.done(job.msg.offset)
        if not part.jobs:
            part.idle.set()
        self._note_room()

    def hold(self, job: Job) -> None:
        """The record is done, but its slot stays taken until :meth:`release`.

        For a mode whose messages wait for a later transaction: the offset may be
        committed with them, while the window still counts the record (bounded memory).
        Caller: the exactly-once worker. Affects: as :meth:`finish`, but not count or room.
        """
        assert not job.published, "a held record is never counted as publishing"
        job.finished = True
        part = job.part
        part.jobs.discard(job)
        if not part.closed:
            part.tracker.done(job.msg.offset)
        if not part.jobs:
            part.idle.set()

    def release(self, n: int) -> None:
        """Give back ``n`` slots kept by :meth:`hold`.

        Caller: as :meth:`hold`, once the transaction resolved. Affects: count, room.
        """
        self.count -= n
        self._note_room()

    def resume_finished(
        self, committed: Mapping[TopicPartition, tuple[int, str]]
    ) -> dict[TopicPartition, int]:
        """Take on the committed (offset, metadata) of new partitions: records the metadata
        calls finished are skipped when fetched. Returns how many per partition.

        Caller: the worker's ``on_assigned``, before the partitions are fetched.
        Affects: the parts' trackers (resume), their committed offset and metadata.
        """
        skipped = {}
        for tp, (offset, metadata) in committed.items():
            part = self.parts.get(tp)
            runs = decode_finished(offset, metadata)
            if part is None or not runs:
                continue
            part.tracker.resume(offset, runs)
            part.committed(offset, metadata)
            skipped[tp] = sum(last - first + 1 for first, last in runs)
        return skipped

    def release_unstarted(self, parts: list[PartitionState]) -> int:
        """Cancel the records of ``parts`` that sent nothing yet (no LLM request on the
        wire, no message to the broker); returns how many. Their offsets stay unfinished.

        Caller: the worker's release on revoke, after :meth:`start_draining`.
        Affects: those jobs (cancelled), part.jobs, part.idle, count, room.
        """
        released = 0
        for part in parts:
            for job in [j for j in part.jobs if not j.on_wire and j.remaining == 0]:
                job.finished = True
                if job.task is not None and not job.task.done():
                    job.task.cancel()
                part.jobs.discard(job)
                released += 1
            if not part.jobs:
                part.idle.set()
        self.count -= released
        self._note_room()
        return released

    def _abandon(self, part: PartitionState) -> int:
        jobs = list(part.jobs)
        for job in jobs:
            job.finished = True
            if job.published:
                self.publishing -= 1
            if job.task is not None and not job.task.done():
                job.task.cancel()
        part.jobs.clear()
        part.idle.set()
        self.count -= len(jobs)
        self._note_room()
        return len(jobs)

    # -- backpressure ---------------------------------------------------------------------
    def update_backpressure(self) -> tuple[list[TopicPartition], list[TopicPartition]]:
        """Pause everything when a part is at ``max_inflight``, resume when both are down to
        ``resume_at``: (to_pause, to_resume).

        Caller: the consume loop, before each fetch. Affects: backpressure, paused.
        """
        if not self.backpressure and self.full:
            self.backpressure = True
            to_pause = [tp for tp in self.parts if tp not in self.paused]
            self.paused.update(to_pause)
            return to_pause, []
        if (
            self.backpressure
            and self.working <= self.resume_at
            and self.publishing <= self.resume_at
        ):
            self.backpressure = False
            to_resume = [tp for tp in self.paused if self.parts[tp].fetching]
            self.paused.difference_update(to_resume)
            return [], to_resume
        return [], []


async def drained(parts: list[PartitionState], timeout_s: float) -> bool:
    """Wait until ``parts`` have no record in flight; False when ``timeout_s`` ran out."""
    waits = [asyncio.ensure_future(p.idle.wait()) for p in parts if p.jobs]
    if not waits:
        return True
    _, pending = await asyncio.wait(waits, timeout=timeout_s)
    for fut in pending:
        fut.cancel()
    return not pending
