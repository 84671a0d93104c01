"""The replay/live seam of the event stream: ids strictly increasing, none repeated, none missed.

A stream subscribes to the live poller first and then replays the database, so that nothing committed in
between is lost. Events committed in that window reach it twice: read by the replay, then pushed by the
poller. The stream must send each exactly once. The test makes the overlap certain: the poller's second
pass is held until the new stream has replayed events 2 and 3, then released, so it pushes 2 and 3 into a
stream that already sent them; 4 and 5 are written once the stream follows the live events.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from typing import Any

from api.db.models import Job
from api.db.session import session_factory
from api.services.events import append_event
from api.services.jobs import transition
from api.streaming import EventHub, StreamSettings


def test_replayed_events_are_not_sent_again_by_the_live_poller(db_url: str, job_id: str) -> None:
    sessions = session_factory(db_url)

    def write(*steps: int, finish: bool = False) -> None:
        with sessions() as s:
            for step in steps:
                append_event(s, job_id, "progress", {"step": step})
            if finish:
                transition(s, s.get(Job, job_id), "cancelled")

    passes, release = [], threading.Event()

    async def scenario() -> tuple[list[int], list[int]]:
        hub = EventHub(sessions, StreamSettings(poll_interval=0.05))  # polling, no LISTEN
        changes, job_status = hub._changes, hub.job_status
        following = asyncio.Event()

        def held_changes(known: dict[str, int]) -> Any:  # runs in the poller's worker thread
            passes.append(dict(known))
            if len(passes) >= 2:
                release.wait(20)
            return changes(known)

        async def signalling_job_status(job: str) -> str | None:
            status = await job_status(job)
            following.set()  # replay done; the stream now reads the live queue
            return status

        hub._changes = held_changes  # type: ignore[method-assign]
        hub.job_status = signalling_job_status  # type: ignore[method-assign]
        async with hub.subscription(job_id, "key-1") as watcher:  # keeps the job watched from seq 1 on
            while len(passes) < 2:  # the first pass saw nothing; the second is held
                await asyncio.sleep(0.01)
            await asyncio.to_thread(write, 1, 2)  # seq 2, 3
            seqs: list[int] = []

            async def finish_when_following() -> None:
                await following.wait()
                await asyncio.to_thread(write, 3, finish=True)  # seq 4, 5 (terminal)

            writer = asyncio.create_task(finish_when_following())
            async for event in hub.stream(job_id, 0, "key-2"):
                seqs.append(event["seq"])
                if event["seq"] == 3:  # replayed 1..3: now let the poller push 2 and 3 as live events
                    release.set()
                    while watcher.queue.qsize() < 2:
                        await asyncio.sleep(0.01)
            await writer
            pushed = [watcher.queue.get_nowait()["seq"] for _ in range(watcher.queue.qsize())]
        return seqs, pushed

    seqs, pushed = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    assert pushed == [2, 3, 4, 5], pushed  # the poller did push the replayed events live
    assert seqs == [1, 2, 3, 4, 5], seqs
    assert all(a < b for a, b in itertools.pairwise(seqs))
