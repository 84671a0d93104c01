"""The Python client against a live server: upload → submit → watch → download → verify, and its errors."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import httpx
import pytest

from dskd_client import ChecksumMismatch, Client, Conflict, NotFound, Unauthorized, ValidationFailed
from tests.live_service import LiveService


def test_upload_submit_watch_download_verify(live: LiveService, tmp_path: Path) -> None:
    sent: list[tuple[int, int]] = []
    with Client(live.url, live.key) as client:
        dataset = client.datasets.upload(
            live.data_file, progress=lambda done, total: sent.append((done, total))
        )
        size = live.data_file.stat().st_size
        assert dataset.row_count == 40 and dataset.size_bytes == size and sent[-1] == (size, size)
        assert [d.id for d in client.datasets.list()] == [dataset.id]

        spec = live.spec(dataset.id, steps=12)
        job = client.jobs.create(spec, idempotency_key="first-try")
        assert client.jobs.create(spec, idempotency_key="first-try").id == job.id  # a retry, not a second job
        seen = []
        done = client.jobs.wait(job.id, on_event=seen.append, timeout=60)
        assert done.status == "succeeded" and done.progress.step == 12
        assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
        assert seen[-1].is_terminal and seen[-1].payload["status"] == "succeeded"

        history = client.jobs.metrics(job.id)
        loss = history.get("loss", "train")
        progress = [e for e in seen if e.type == "progress"]
        assert loss.steps == [e.payload["step"] for e in progress] == list(range(1, 13))
        assert loss.values == [e.payload["metrics"]["loss"] for e in progress]
        assert history.get("dev_ce", "eval").steps[0] == 0

        listed = {a.name: a for a in client.artifacts.list(job.id)}
        tar = client.artifacts.download(job.id, "student.tar", tmp_path)
        assert tar == tmp_path / "student.tar" and not (tmp_path / "student.tar.part").exists()
        assert hashlib.sha256(tar.read_bytes()).hexdigest() == listed["student.tar"].sha256
        with tarfile.open(tar) as archive:
            assert {"export/config.json", "export/model.safetensors"} <= set(archive.getnames())


def test_download_resumes_a_partial_file_and_checks_sha256(live: LiveService, tmp_path: Path) -> None:
    with Client(live.url, live.key) as client:
        dataset = client.datasets.upload(live.data_file)
        job = client.jobs.wait(client.jobs.create(live.spec(dataset.id, steps=3)).id, timeout=60)
        weights = client.artifacts.get(job.id, "model.safetensors")
        whole = client.http.get(weights.download_url).content
        half = weights.size_bytes // 2

        part = tmp_path / "model.safetensors.part"
        part.write_bytes(whole[:half])
        progress: list[int] = []
        path = client.artifacts.download(
            job.id, "model.safetensors", tmp_path, progress=lambda d, t: progress.append(d)
        )
        assert path.read_bytes() == whole
        assert progress[0] > half and progress[0] - half <= 1 << 20  # only the missing bytes were fetched

        (tmp_path / "again.bin.part").write_bytes(b"\0" * half)  # corrupted: resumed, then caught by sha256
        with pytest.raises(ChecksumMismatch):
            client.artifacts.download(job.id, "model.safetensors", tmp_path / "again.bin")
        assert not (tmp_path / "again.bin.part").exists() and not (tmp_path / "again.bin").exists()


def test_errors_carry_the_problem_fields(live: LiveService) -> None:
    with pytest.raises(Unauthorized) as caught:
        Client(live.url, "dskd_wrong").jobs.list()
    assert (
        caught.value.status == 401
        and caught.value.title == "Unauthorized"
        and "invalid" in caught.value.detail
    )
    with Client(live.url, live.key) as client:
        with pytest.raises(NotFound) as missing:
            client.jobs.get("nope")
        assert missing.value.type == "urn:dskd:problem:not-found" and missing.value.request_id
        with pytest.raises(ValidationFailed) as invalid:
            client.jobs.create(
                {"student": {"name_or_path": "org/x"}, "data": {}, "training": {"max_steps": -1}}
            )
        assert "training.max_steps" in {e["field"] for e in invalid.value.errors}
        assert "training.max_steps" in str(invalid.value)
        dataset = client.datasets.upload(live.data_file)
        job = client.jobs.wait(client.jobs.create(live.spec(dataset.id, steps=2)).id, timeout=60)
        with pytest.raises(Conflict):
            client.jobs.cancel(job.id)


def test_jobs_iterate_across_pages(live: LiveService) -> None:
    with Client(live.url, live.key) as client:
        dataset = client.datasets.upload(live.data_file)
        created = [client.jobs.create(live.spec(dataset.id, name=f"job {i}", steps=1)).id for i in range(5)]
        first = client.jobs.list(limit=2)
        assert len(first.items) == 2 and first.next_cursor
        assert [j.id for j in client.jobs.iter(page_size=2)] == created[::-1]
        live.queue.join()


class CutOnce(httpx.HTTPTransport):
    """Drops the first event stream after `events` events, as a flaky proxy would; records Last-Event-ID."""

    def __init__(self, events: int) -> None:
        super().__init__()
        self.events = events
        self.cut = False
        self.last_event_ids: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if "text/event-stream" not in request.headers.get("accept", ""):
            return response
        self.last_event_ids.append(request.headers.get("last-event-id"))
        if self.cut:
            return response
        self.cut = True
        inner, limit = response.stream, self.events

        def cut_stream():
            seen = 0
            for chunk in inner:
                yield chunk
                seen += chunk.count(b"data:")
                if seen >= limit:
                    raise httpx.ReadError("connection reset by a proxy")

        class Cut(httpx.SyncByteStream):
            def __iter__(self):
                return cut_stream()

            def close(self) -> None:
                inner.close()

        return httpx.Response(
            response.status_code, headers=response.headers, stream=Cut(), extensions=response.extensions
        )


def test_the_stream_reconnects_with_last_event_id(live: LiveService) -> None:
    transport = CutOnce(events=4)
    with Client(live.url, live.key) as setup:
        dataset = setup.datasets.upload(live.data_file)
        job_id = setup.jobs.create(live.spec(dataset.id, steps=8)).id
    with Client(live.url, live.key, transport=transport) as client:
        events = list(client.events.stream(job_id))
    # Nothing lost, nothing twice; the second connection resumed after the 4th event.
    assert [e.seq for e in events] == list(range(1, len(events) + 1)) and events[-1].is_terminal
    assert transport.last_event_ids == [None, "4"]
    with Client(live.url, live.key) as client:
        assert len(list(client.events.iter(job_id))) == len(events)


def test_environment_configures_the_client(live: LiveService, monkeypatch) -> None:
    monkeypatch.setenv("DSKD_API_URL", live.url)
    monkeypatch.setenv("DSKD_API_KEY", live.key)
    with Client() as client:
        assert client.jobs.list().items == []
    monkeypatch.delenv("DSKD_API_KEY")
    with pytest.raises(Exception, match="DSKD_API_KEY"):
        Client()


def test_upload_body_is_streamed_from_the_file(live: LiveService) -> None:
    reads: list[int] = []
    with Client(live.url, live.key) as client:
        big = live.data_file.parent / "big.jsonl"
        big.write_text((live.data_file.read_text()) * 20)
        client.datasets.upload(big, progress=lambda done, total: reads.append(done))
    assert len(reads) > 1 and reads[-1] == big.stat().st_size
