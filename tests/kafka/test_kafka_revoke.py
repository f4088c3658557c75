"""A revoke releases at once what never reached the LLM (kafka/inflight.py, llm/onwire.py)."""

from __future__ import annotations

import asyncio

from aiokafka import ConsumerRecord, TopicPartition

from streamsynth.kafka.inflight import InflightWindow, Job
from streamsynth.llm import onwire

TP = TopicPartition("in", 0)


def _msg(offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        TP.topic, TP.partition, offset, 0, 0, b"k", b"v", None, 1, 1, []
    )  # fmt: skip


async def test_only_records_on_the_wire_are_left_to_drain() -> None:
    window = InflightWindow(max_inflight=10)
    window.assign({TP})
    part = window.parts[TP]
    sent = asyncio.Event()
    never = asyncio.Event()

    async def record(job: Job, sends: bool) -> None:
        onwire.track(job)
        if sends:
            # What the LLM client does in a child task of the record (a stage's gather).
            await asyncio.get_running_loop().create_task(_send())
        await never.wait()

    async def _send() -> None:
        onwire.mark_on_wire()
        sent.set()

    jobs = [window.admit(part, _msg(o)) for o in range(4)]
    assert all(j is not None for j in jobs)
    on_wire = {1, 3}
    for job in jobs:
        assert job is not None
        job.task = asyncio.get_running_loop().create_task(record(job, job.msg.offset in on_wire))
    await asyncio.wait_for(sent.wait(), 5)
    await asyncio.sleep(0.01)
    assert [j.on_wire for j in jobs if j is not None] == [False, True, False, True]

    window.start_draining([part])
    assert window.release_unstarted([part]) == 2
    assert window.count == 2 and {j.msg.offset for j in part.jobs} == on_wire
    await asyncio.sleep(0)
    assert jobs[0] is not None and jobs[0].task is not None and jobs[0].task.cancelled()
    # Released records stay unfinished: the commit does not pass offset 0.
    assert part.tracker.committable() == 0
    assert window.close([part]) == 2
    never.set()


def test_mark_on_wire_outside_a_tracked_task_does_nothing() -> None:
    onwire.mark_on_wire()  # no current unit: no error, nothing flagged
