"""Tenant isolation with two owners who both have data: every list and object route returns the caller's
own objects (non-empty, so a filter that drops everything fails too) and never the other owner's."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from api.db.models import Job
from api.services.artifacts import register_export
from api.services.events import append_event
from tests.api.conftest import assert_problem, job_body, upload


@dataclass
class Tenant:
    tag: str
    headers: dict[str, str]
    datasets: set[str]
    jobs: set[str]
    weights: dict[str, bytes]  # job id -> its exported model.safetensors


def make_tenant(client: TestClient, session, settings, headers: dict[str, str], tag: str) -> Tenant:
    tenant = Tenant(tag, headers, set(), set(), {})
    datasets = [
        upload(
            client, headers, [f'{{"prompt": "{tag} {i}", "response": "r"}}'], name=f"{tag}-{i}.jsonl"
        ).json()["id"]
        for i in range(2)  # two of each, so a page of one exercises the cursor
    ]
    for i, dataset in enumerate(datasets):
        # Each job's dev set is the tenant's other dataset, so both references are owned and shown.
        data = {"dataset_id": dataset, "dev_dataset_id": datasets[1 - i]}
        response = client.post(
            "/v1/jobs", headers=headers, json=job_body(dataset, name=f"{tag} job {i}", data=data)
        )
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        append_event(session, job_id, "progress", {"step": 1, "owner": tag})
        export = settings.runs_dir / job_id / "export"
        export.mkdir(parents=True)
        tenant.weights[job_id] = f"{tag}-{i}".encode() * 10
        (export / "model.safetensors").write_bytes(tenant.weights[job_id])
        register_export(session, session.get(Job, job_id), export, runs_dir=settings.runs_dir)
        tenant.datasets.add(dataset)
        tenant.jobs.add(job_id)
    return tenant


@pytest.fixture
def tenants(client: TestClient, session, settings, alice, bob) -> tuple[Tenant, Tenant]:
    return make_tenant(client, session, settings, alice, "alice"), make_tenant(
        client, session, settings, bob, "bob"
    )


def both_ways(tenants: tuple[Tenant, Tenant]) -> list[tuple[Tenant, Tenant]]:
    a, b = tenants
    return [(a, b), (b, a)]


def test_dataset_list_holds_only_the_callers_datasets(client: TestClient, tenants) -> None:
    for me, other in both_ways(tenants):
        items = client.get("/v1/datasets", headers=me.headers).json()["items"]
        assert {d["id"] for d in items} == me.datasets, "dataset list leaks or loses datasets"
        assert not {d["id"] for d in items} & other.datasets


def test_job_list_pages_hold_only_the_callers_jobs(client: TestClient, tenants) -> None:
    for me, _ in both_ways(tenants):
        assert {j["id"] for j in client.get("/v1/jobs", headers=me.headers).json()["items"]} == me.jobs
        filtered = client.get("/v1/jobs?status=queued", headers=me.headers).json()["items"]
        assert {j["id"] for j in filtered} == me.jobs
        seen, cursor = [], None
        while True:  # one job per page: the cursor must not step into the other owner's jobs
            query = "/v1/jobs?limit=1" + (f"&cursor={cursor}" if cursor else "")
            page = client.get(query, headers=me.headers).json()
            seen += [j["id"] for j in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(me.jobs)


def test_object_routes_answer_for_the_owner_and_404_for_the_other(client: TestClient, tenants) -> None:
    checked = 0
    for me, other in both_ways(tenants):
        for dataset in me.datasets:
            assert client.get(f"/v1/datasets/{dataset}", headers=me.headers).json()["id"] == dataset
            assert_problem(client.get(f"/v1/datasets/{dataset}", headers=other.headers), 404)
        for job in me.jobs:
            got = client.get(f"/v1/jobs/{job}", headers=me.headers).json()
            assert got["id"] == job and {got["dataset_id"], got["dev_dataset_id"]} == me.datasets
            events = client.get(f"/v1/jobs/{job}/events", headers=me.headers).json()["items"]
            assert [e["payload"]["owner"] for e in events if e["type"] == "progress"] == [me.tag]
            artifacts = client.get(f"/v1/jobs/{job}/artifacts", headers=me.headers).json()["items"]
            assert {a["download_url"].split("/")[3] for a in artifacts} == {job}
            download = client.get(f"/v1/jobs/{job}/artifacts/model.safetensors", headers=me.headers)
            assert download.content == me.weights[job]
            for path in ("", "/events", "/artifacts", "/artifacts/model.safetensors"):
                assert_problem(client.get(f"/v1/jobs/{job}{path}", headers=other.headers), 404)
            checked += 1
    assert checked == 4


def test_writes_to_the_other_owners_objects_change_nothing(client: TestClient, tenants) -> None:
    alice, bob = tenants
    job, dataset = sorted(alice.jobs)[0], sorted(alice.datasets)[0]
    assert_problem(client.post(f"/v1/jobs/{job}/cancel", headers=bob.headers), 404)
    assert client.get(f"/v1/jobs/{job}", headers=alice.headers).json()["status"] == "queued"
    assert_problem(client.delete(f"/v1/datasets/{dataset}", headers=bob.headers), 404)
    assert client.get(f"/v1/datasets/{dataset}", headers=alice.headers).status_code == 200
    # Bob cannot train on Alice's dataset, nor evaluate on it, and no job of his appears.
    refused = client.post("/v1/jobs", headers=bob.headers, json=job_body(dataset))
    assert refused.status_code in (404, 422) and dataset in refused.text
    own = sorted(bob.datasets)[0]
    body = job_body(own, data={"dataset_id": own, "dev_dataset_id": dataset})
    refused = assert_problem(
        client.post("/v1/jobs", headers=bob.headers, json=body), 422, "data.dev_dataset_id"
    )
    assert [e["field"] for e in refused["errors"]] == ["data.dev_dataset_id"]
    assert {j["id"] for j in client.get("/v1/jobs", headers=bob.headers).json()["items"]} == bob.jobs


def test_idempotency_keys_are_per_owner(client: TestClient, tenants) -> None:
    alice, bob = tenants
    key = {"Idempotency-Key": "same-key"}
    first = client.post(
        "/v1/jobs", headers={**alice.headers, **key}, json=job_body(sorted(alice.datasets)[0])
    )
    second = client.post("/v1/jobs", headers={**bob.headers, **key}, json=job_body(sorted(bob.datasets)[0]))
    assert first.status_code == 201 and second.status_code == 201, second.text
    assert second.json()["id"] != first.json()["id"]
    assert second.json()["id"] not in alice.jobs | {first.json()["id"]}


def test_fixture_data_is_what_the_assertions_need(tenants) -> None:
    # The loops above are only as good as the data they walk.
    for tenant in tenants:
        assert len(tenant.datasets) == 2 and len(tenant.jobs) == 2 and all(tenant.weights.values())
    assert not tenants[0].jobs & tenants[1].jobs  # distinct objects per owner
