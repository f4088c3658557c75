"""The in-flight window and partition lifecycle (kafka/inflight.py), without a broker."""

from __future__ import annotations

import asyncio

from aiokafka import ConsumerRecord, TopicPartition

from streamsynth.config import settings_from_dict
from streamsynth.kafka.inflight import InflightWindow, Job, PartitionStatus, drained
from streamsynth.kafka.worker import Worker

TP0, TP1 = TopicPartition("in", 0), TopicPartition("in", 1)


def _msg(tp: TopicPartition, offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        tp.topic, tp.partition, offset, 0, 0, b"k", b"v", None, 1, 1, []
    )  # fmt: skip


def _admit(window: InflightWindow, tp: TopicPartition, *offsets: int) -> list[Job]:
    part = window.fetching(tp)
    assert part is not None
    jobs = [window.admit(part, _msg(tp, o)) for o in offsets]
    return [j for j in jobs if j is not None]


async def test_count_is_the_sum_of_the_partitions_jobs() -> None:
    window = InflightWindow(max_inflight=10)
    window.assign({TP0, TP1})
    a = _admit(window, TP0, 0, 1, 2)
    b = _admit(window, TP1, 0)
    assert _admit(window, TP0, 1, 2) == []  # refetched in this generation: not twice
    assert window.count == 4 == sum(len(p.jobs) for p in window.parts.values())
    window.finish(a[1])
    window.finish(b[0])
    assert window.count == 2 and window.parts[TP1].idle.is_set()
    assert not window.parts[TP0].idle.is_set()
    # Offset 1 finished before 0: the commit stays at the first unfinished record.
    assert window.parts[TP0].to_commit() == 0
    window.finish(a[0])
    assert window.parts[TP0].to_commit() == 2


async def test_pause_at_the_limit_resume_at_the_low_water_mark() -> None:
    window = InflightWindow(max_inflight=4, resume_fraction=0.5)
    window.assign({TP0, TP1})
    jobs = _admit(window, TP0, 0, 1, 2) + _admit(window, TP1, 0)
    to_pause, to_resume = window.update_backpressure()
    assert sorted(to_pause) == [TP0, TP1] and to_resume == []
    assert window.update_backpressure() == ([], [])  # no flapping while full
    window.finish(jobs[0])
    assert window.update_backpressure() == ([], [])  # 3 > resume_at (2)
    assert not window.room.is_set()
    window.finish(jobs[1])
    assert window.room.is_set()
    to_pause, to_resume = window.update_backpressure()
    assert to_pause == [] and sorted(to_resume) == [TP0, TP1]
    assert not window.backpressure and window.paused == set()


async def test_partition_assigned_while_full_is_paused_at_once() -> None:
    window = InflightWindow(max_inflight=1)
    window.assign({TP0})
    _admit(window, TP0, 0)
    window.update_backpressure()
    assert window.assign({TP1}) == [TP1]
    assert window.paused == {TP0, TP1}


async def test_release_drains_then_closes_and_cancels_the_rest() -> None:
    window = InflightWindow(max_inflight=10)
    window.assign({TP0, TP1})
    done, stuck = _admit(window, TP0, 0, 1)
    stuck.task = asyncio.get_running_loop().create_task(asyncio.sleep(60))
    window.update_backpressure()
    part = window.parts[TP0]

    # A draining partition is paused but not for backpressure: a resume must not wake it.
    assert window.start_draining([part]) == [TP0]
    assert part.status is PartitionStatus.DRAINING and window.fetching(TP0) is None
    window.finish(done)  # finishing while draining still marks the offset done
    assert part.to_commit() == 1
    assert not await drained([part], 0.05)  # the stuck record holds the drain

    assert window.close([part]) == 1
    assert part.closed and stuck.finished
    await asyncio.sleep(0)
    assert stuck.task.cancelled()
    assert TP0 not in window.parts and window.count == 0
    assert part.to_commit() is None  # closed: nothing more is committed for it
    assert await drained([window.parts[TP1]], 0.05)


async def test_a_held_record_is_done_but_keeps_its_slot_until_released() -> None:
    window = InflightWindow(max_inflight=2, resume_fraction=0.5)
    window.assign({TP0})
    a, b = _admit(window, TP0, 0, 1)
    window.hold(a)
    window.hold(b)
    part = window.parts[TP0]
    assert a.finished and part.idle.is_set() and part.to_commit() == 2
    assert window.count == 2 and not window.room.is_set()  # still counted: memory bound
    window.release(1)
    assert window.count == 1 and window.room.is_set()


async def test_a_published_record_frees_its_working_slot() -> None:
    """Records awaiting acks do not hold slots for work: the window takes on more."""
    window = InflightWindow(max_inflight=2, resume_fraction=0.5)
    window.assign({TP0})
    a, b = _admit(window, TP0, 0, 1)
    assert window.full and window.free == 0
    window.update_backpressure()
    window.published(a)
    window.published(b)
    window.published(b)  # twice is once
    assert (window.count, window.working, window.publishing) == (2, 0, 2)
    # The publishing part is full too: still paused until both parts have room.
    assert window.full and window.update_backpressure() == ([], [])
    window.finish(a)
    assert (window.count, window.publishing) == (1, 1) and window.room.is_set()
    assert window.update_backpressure() == ([], [TP0])
    assert len(_admit(window, TP0, 2, 3)) == 2
    assert window.working == 2 and window.full  # two working, one publishing
    # Offsets commit only once acknowledged: b (1) is published, not done.
    assert window.parts[TP0].to_commit() == 1
    window.finish(b)
    assert window.parts[TP0].to_commit() == 2 and window.publishing == 0


async def test_closing_a_partition_forgets_its_publishing_records() -> None:
    window = InflightWindow(max_inflight=4)
    window.assign({TP0, TP1})
    (a,) = _admit(window, TP0, 0)
    (b,) = _admit(window, TP1, 0)
    window.published(a)
    window.published(b)
    assert window.close([window.parts[TP0]]) == 1
    assert (window.count, window.publishing) == (1, 1)
    window.published(a)  # a late call for a cancelled record changes nothing
    assert window.publishing == 1
    window.finish(b)
    assert (window.count, window.publishing, window.working) == (0, 0, 0)


class _PausingSource:
    def __init__(self) -> None:
        self.paused: set[TopicPartition] = set()

    def pause(self, tps: list[TopicPartition]) -> None:
        self.paused.update(tps)

    def resume(self, tps: list[TopicPartition]) -> None:
        self.paused.difference_update(tps)


async def test_the_worker_exports_both_parts_of_the_window() -> None:
    settings = settings_from_dict(
        {
            "kafka": {
                "bootstrap_servers": "127.0.0.1:1",
                "group_id": "g",
                "input_topic": "in",
                "dlq_topic": "dlq",
            },
            "llm": {"base_url": "http://127.0.0.1:1/v1", "model": "m"},
            "stages": [
                {"task": "custom", "prompt": "{document}", "output_field": "o", "output_topic": "o"}
            ],
            "worker": {"max_inflight_records": 2},
        }
    )
    worker = Worker(settings)  # never started: no Kafka
    window = worker.window
    window.assign({TP0})
    a, b = _admit(window, TP0, 0, 1)
    window.published(a)
    source = _PausingSource()
    worker._apply_backpressure(source)  # type: ignore[arg-type]
    gauges = worker.metrics
    assert gauges.inflight_records._value.get() == 2
    assert gauges.records_awaiting_ack._value.get() == 1
    assert source.paused == set()  # one working, one publishing: neither part is full
    window.published(b)
    (c,) = _admit(window, TP0, 2)
    _admit(window, TP0, 3)
    worker._apply_backpressure(source)  # type: ignore[arg-type]
    assert (gauges.inflight_records._value.get(), gauges.records_awaiting_ack._value.get()) == (
        4,
        2,
    )
    assert source.paused == {TP0} and c.published is False
