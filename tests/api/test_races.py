"""Races settled by the database: many submissions with one Idempotency-Key make one job, and deleting a dataset
while jobs are submitted on it never leaves a job without its dataset (and never answers 5xx); a dev dataset
deleted between the check and the insert is a 422 on data.dev_dataset_id."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient
from sqlalchemy import select

from api.db.models import Dataset, Job
from api.db.session import session_factory
from api.routes import jobs as job_routes
from tests.api.conftest import assert_problem, job_body, upload


def test_one_idempotency_key_one_job(client: TestClient, alice, dataset_id: str, session, queue) -> None:
    headers = {**alice, "Idempotency-Key": "same-key"}
    with ThreadPoolExecutor(max_workers=24) as pool:
        responses = list(
            pool.map(lambda _: client.post("/v1/jobs", headers=headers, json=job_body(dataset_id)), range(60))
        )
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) == 1 and statuses.count(200) == 59, [
        (r.status_code, r.text[:150]) for r in responses if r.status_code not in (200, 201)
    ][:3]
    assert len({r.json()["id"] for r in responses}) == 1
    assert (
        session.scalar(select(Job.id).where(Job.idempotency_key == "same-key")) == responses[0].json()["id"]
    )
    assert len(queue.enqueued) == 1


def test_delete_while_submitting(client: TestClient, alice, session, settings) -> None:
    settings.max_queued_jobs_per_key = 1000
    for _ in range(5):
        dataset_id = upload(client, alice).json()["id"]

        def submit(_: int, dataset_id: str = dataset_id) -> int:
            return client.post("/v1/jobs", headers=alice, json=job_body(dataset_id)).status_code

        def delete(_: int, dataset_id: str = dataset_id) -> int:
            return client.delete(f"/v1/datasets/{dataset_id}", headers=alice).status_code

        with ThreadPoolExecutor(max_workers=12) as pool:
            submitted = pool.map(submit, range(10))
            deleted = pool.map(delete, range(2))
            statuses = list(submitted) + list(deleted)
        assert all(s < 500 for s in statuses), statuses
        session.expire_all()
        exists = session.get(Dataset, dataset_id) is not None
        jobs = session.scalars(
            select(Job).where(Job.spec["data"]["dataset_id"].as_string() == dataset_id)
        ).all()
        # Every job that was created still has its dataset: it was deleted only if no job got in first.
        assert all(job.dataset_id == dataset_id for job in jobs)
        assert exists or not jobs


def test_a_dev_dataset_deleted_after_the_check_is_a_422(
    client: TestClient, alice, dataset_id: str, settings, monkeypatch, queue
) -> None:
    dev = upload(client, alice, name="dev.jsonl").json()["id"]
    checked = job_routes.check_submission

    def check_then_delete(*args, **kwargs):
        submission = checked(*args, **kwargs)
        with session_factory(settings.database_url)() as other:  # another request deletes it meanwhile
            other.delete(other.get(Dataset, dev))
            other.commit()
        return submission

    monkeypatch.setattr(job_routes, "check_submission", check_then_delete)
    body = job_body(dataset_id, data={"dataset_id": dataset_id, "dev_dataset_id": dev})
    problem = assert_problem(client.post("/v1/jobs", headers=alice, json=body), 422, "data.dev_dataset_id")
    assert [e["field"] for e in problem["errors"]] == ["data.dev_dataset_id"]  # the training dataset is fine
    assert queue.enqueued == []
