"""POST/GET /v1/jobs and cancel: bodies, headers, validation problems, idempotency, pagination."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from api.db.models import Job
from api.services.jobs import claim_job, transition
from tests.api.conftest import FakeQueue, assert_problem, job_body, upload


def test_create_returns_201_location_and_enqueues(
    client: TestClient, alice, dataset_id: str, queue: FakeQueue
) -> None:
    response = client.post("/v1/jobs", headers=alice, json=job_body(dataset_id))
    assert response.status_code == 201
    body = response.json()
    assert response.headers["location"] == f"/v1/jobs/{body['id']}"
    assert body["status"] == "queued" and body["attempt"] == 0 and body["error"] is None
    assert body["dataset_id"] == dataset_id and body["name"] == "toy sft"
    assert body["spec"]["distill"]["method"] == "sft" and body["spec"]["data"]["path"] is None
    assert queue.enqueued == [body["id"]]
    got = client.get(body["links"]["self"], headers=alice)
    assert got.status_code == 200 and got.json()["id"] == body["id"]


def test_schema_and_range_errors_name_the_field(
    client: TestClient, alice, dataset_id: str, queue: FakeQueue
) -> None:
    bad = job_body(dataset_id, training={"lr": -1, "max_steps": 2})
    assert_problem(client.post("/v1/jobs", headers=alice, json=bad), 422, "training.lr")
    bad = job_body(dataset_id, distill={"method": "no_such_method"})
    assert_problem(client.post("/v1/jobs", headers=alice, json=bad), 422, "distill.method")
    body = job_body(dataset_id)
    del body["student"]
    assert_problem(client.post("/v1/jobs", headers=alice, json=body), 422, "student")
    assert queue.enqueued == []


def test_user_paths_are_refused(client: TestClient, alice, dataset_id: str) -> None:
    for section, key in (("data", "path"), ("data", "dev_path"), ("distill", "seqkd_data_path")):
        body = job_body(dataset_id)
        body.setdefault(section, {})[key] = "/etc/passwd"
        if key == "dev_path":
            body["data"]["dev_ratio"] = 0.0
        problem = assert_problem(client.post("/v1/jobs", headers=alice, json=body), 422, f"{section}.{key}")
        assert problem["errors"][0]["loc"] == ["body", section, key]


def test_dataset_must_exist_and_be_yours(client: TestClient, alice, bob, dataset_id: str) -> None:
    assert_problem(client.post("/v1/jobs", headers=alice, json=job_body("nope")), 422, "data.dataset_id")
    assert_problem(client.post("/v1/jobs", headers=bob, json=job_body(dataset_id)), 422, "data.dataset_id")


def test_a_separate_dev_dataset_is_stored_on_the_job(
    client: TestClient, alice, dataset_id: str, session, queue: FakeQueue
) -> None:
    dev = upload(client, alice, ['{"prompt": "dev?", "response": "dev"}'], name="dev.jsonl").json()["id"]
    response = client.post(
        "/v1/jobs",
        headers=alice,
        json=job_body(dataset_id, data={"dataset_id": dataset_id, "dev_dataset_id": dev}),
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["dataset_id"], body["dev_dataset_id"]) == (dataset_id, dev)
    assert body["spec"]["data"]["dev_dataset_id"] == dev and body["spec"]["data"]["dev_path"] is None
    assert session.get(Job, body["id"]).dev_dataset_id == dev
    assert client.get(f"/v1/jobs/{body['id']}", headers=alice).json()["dev_dataset_id"] == dev
    assert queue.enqueued == [body["id"]]
    plain = client.post("/v1/jobs", headers=alice, json=job_body(dataset_id)).json()
    assert plain["dev_dataset_id"] is None


def test_dev_dataset_must_exist_and_be_yours(
    client: TestClient, alice, bob, dataset_id: str, queue: FakeQueue
) -> None:
    bobs = upload(client, bob).json()["id"]

    def refusal(dev_id: str) -> list[dict]:
        body = job_body(bobs, data={"dataset_id": bobs, "dev_dataset_id": dev_id})
        problem = assert_problem(client.post("/v1/jobs", headers=bob, json=body), 422, "data.dev_dataset_id")
        return [{k: str(v).replace(dev_id, "<id>") for k, v in e.items()} for e in problem["errors"]]

    missing = "0" * 32  # well-formed, no such dataset
    # Alice's dataset is refused to Bob word for word like one that does not exist: nothing tells them apart.
    assert (
        refusal(dataset_id)
        == refusal(missing)
        == [
            {
                "loc": "['body', 'data', 'dev_dataset_id']",
                "field": "data.dev_dataset_id",
                "msg": "no dataset '<id>'",
            }
        ]
    )
    assert refusal("nope")[0]["field"] == "data.dev_dataset_id"
    assert queue.enqueued == []


def test_one_dev_source(client: TestClient, alice, dataset_id: str) -> None:
    body = job_body(
        dataset_id, data={"dataset_id": dataset_id, "dev_dataset_id": dataset_id, "dev_ratio": 0.1}
    )
    problem = assert_problem(client.post("/v1/jobs", headers=alice, json=body), 422, "data.dev_dataset_id")
    assert "dev_ratio" in problem["errors"][0]["msg"]
    body = job_body(dataset_id, data={"dataset_id": dataset_id, "dev_path": "/etc/passwd"})
    problem = assert_problem(client.post("/v1/jobs", headers=alice, json=body), 422, "data.dev_path")
    assert "data.dev_dataset_id" in problem["errors"][0]["msg"]  # what to use instead


def test_model_location_rules(client: TestClient, alice, dataset_id: str, settings) -> None:
    models_root: Path = settings.models_root
    (models_root / "tiny").mkdir(parents=True)
    (models_root / "org" / "local").mkdir(parents=True)
    outside = models_root.parent / "elsewhere"
    outside.mkdir()
    (models_root / "escape").symlink_to(outside)
    refused = {
        "../elsewhere": "under the server's models root",
        str(outside): "under the server's models root",
        "/etc": "under the server's models root",
        "tiny/../../elsewhere": "under the server's models root",
        "escape": "under the server's models root",
        "./missing": "no model directory './missing'",
        "a/b/c": "no model directory",
        "bad name!": "no model directory",
        "studnet": "no model directory 'studnet'",  # a typo of a local name is not a hub id
        "gpt2": "hub id has the form 'org/name'",
        "x" * 300: "longer than 255 bytes",
        "org/" + "y" * 256: "longer than 255 bytes",
        "tab\there": "control characters",
        ".": "no model directory '.'",
    }
    for name, needle in refused.items():
        body = job_body(dataset_id, student={"name_or_path": name})
        problem = assert_problem(
            client.post("/v1/jobs", headers=alice, json=body), 422, "student.name_or_path"
        )
        assert needle in problem["errors"][0]["msg"], (name, problem)
    for name, stored in (
        ("tiny", "tiny"),
        (str(models_root / "tiny"), "tiny"),  # stored relative: no server path in the spec
        ("./tiny", "tiny"),
        ("org/local", "org/local"),  # a local directory wins over the hub id of the same name
        ("openai-community/gpt2", "openai-community/gpt2"),  # whether it exists is the worker's to tell
    ):
        body = job_body(dataset_id, student={"name_or_path": name})
        response = client.post("/v1/jobs", headers=alice, json=body)
        assert response.status_code == 201, response.text
        assert response.json()["spec"]["student"]["name_or_path"] == stored
        assert str(models_root) not in response.text
    body = job_body(
        dataset_id, teacher={"name_or_path": "Qwen/Qwen2.5-0.5B"}, distill={"method": "vanilla_kd"}
    )
    response = client.post("/v1/jobs", headers=alice, json=body)
    assert (
        response.status_code == 201
        and response.json()["spec"]["teacher"]["name_or_path"] == "Qwen/Qwen2.5-0.5B"
    )


def test_hub_ids_can_be_forbidden(client: TestClient, alice, dataset_id: str, settings) -> None:
    settings.allow_hub_models = False
    (settings.models_root / "tiny").mkdir(parents=True)
    body = job_body(dataset_id, student={"name_or_path": "openai-community/gpt2"})
    problem = assert_problem(client.post("/v1/jobs", headers=alice, json=body), 422, "student.name_or_path")
    assert "allow_hub_models" in problem["errors"][0]["msg"]
    body = job_body(dataset_id, student={"name_or_path": "tiny"})
    assert client.post("/v1/jobs", headers=alice, json=body).status_code == 201


def test_idempotent_create(client: TestClient, alice, dataset_id: str, queue: FakeQueue) -> None:
    headers = {**alice, "Idempotency-Key": "abc-123"}
    first = client.post("/v1/jobs", headers=headers, json=job_body(dataset_id))
    second = client.post("/v1/jobs", headers=headers, json=job_body(dataset_id))
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["location"] == first.headers["location"]
    assert queue.enqueued == [first.json()["id"]]
    different = client.post("/v1/jobs", headers=headers, json=job_body(dataset_id, name="other"))
    assert_problem(different, 422, "Idempotency-Key")
    assert len(client.get("/v1/jobs", headers=alice).json()["items"]) == 1


def test_pagination_and_status_filter(client: TestClient, alice, bob, dataset_id: str, session) -> None:
    ids = [client.post("/v1/jobs", headers=alice, json=job_body(dataset_id)).json()["id"] for _ in range(5)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        response = client.get(
            "/v1/jobs", headers=alice, params={"limit": 2, **({"cursor": cursor} if cursor else {})}
        )
        page = response.json()
        seen += [j["id"] for j in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and len(seen) == len(set(seen)) == 5
    assert seen == list(reversed(ids))  # newest first
    transition(session, session.get(Job, ids[0]), "cancelled")
    cancelled = client.get("/v1/jobs", headers=alice, params={"status": "cancelled"}).json()["items"]
    assert [j["id"] for j in cancelled] == [ids[0]]
    both = client.get("/v1/jobs?status=cancelled&status=queued", headers=alice).json()["items"]
    assert len(both) == 5
    assert client.get("/v1/jobs", headers=bob).json() == {"items": [], "next_cursor": None}
    assert_problem(client.get("/v1/jobs?status=bogus", headers=alice), 422, "status")
    assert_problem(client.get("/v1/jobs?cursor=%%%", headers=alice), 422, "cursor")
    assert_problem(client.get("/v1/jobs?limit=0", headers=alice), 422, "limit")


def test_progress_elapsed_and_eta(client: TestClient, alice, job_id: str, session) -> None:
    from api.services.jobs import update_progress

    claim_job(session, job_id, "w", 60)
    update_progress(
        session,
        job_id,
        {"step": 25, "total_steps": 100, "epoch": 0.5, "metrics": {"loss": 2.0}, "elapsed_seconds": 50.0},
    )
    body = client.get(f"/v1/jobs/{job_id}", headers=alice).json()
    assert body["status"] == "running" and body["attempt"] == 1
    assert body["progress"] == {
        "step": 25,
        "total_steps": 100,
        "epoch": 0.5,
        "metrics": {"loss": 2.0},
        "elapsed_seconds": 50.0,
        "eta_seconds": 150.0,
    }


def test_cancel_transitions(client: TestClient, alice, dataset_id: str, session, queue: FakeQueue) -> None:
    queued = client.post("/v1/jobs", headers=alice, json=job_body(dataset_id)).json()["id"]
    response = client.post(f"/v1/jobs/{queued}/cancel", headers=alice)
    assert response.status_code == 202 and response.json()["status"] == "cancelled"
    assert queue.revoked == [queued]
    assert_problem(client.post(f"/v1/jobs/{queued}/cancel", headers=alice), 409)

    running = client.post("/v1/jobs", headers=alice, json=job_body(dataset_id)).json()["id"]
    claim_job(session, running, "w", 60)
    response = client.post(f"/v1/jobs/{running}/cancel", headers=alice)
    assert response.status_code == 202 and response.json()["status"] == "cancel_requested"
    assert queue.revoked == [queued]  # a running job is never revoked, only flagged
    again = client.post(f"/v1/jobs/{running}/cancel", headers=alice)
    assert again.status_code == 202 and again.json()["status"] == "cancel_requested"
    transition(session, session.get(Job, running), "cancelled")
    assert_problem(client.post(f"/v1/jobs/{running}/cancel", headers=alice), 409)


def test_failed_job_shows_error(client: TestClient, alice, job_id: str, session) -> None:
    claim_job(session, job_id, "w", 60)
    transition(
        session, session.get(Job, job_id), "failed", error={"code": "model_load", "message": "no config.json"}
    )
    body = client.get(f"/v1/jobs/{job_id}", headers=alice).json()
    assert body["status"] == "failed" and body["error"] == {"code": "model_load", "message": "no config.json"}
    assert body["finished_at"] is not None and body["progress"]["eta_seconds"] is None


def test_unknown_job_and_route(client: TestClient, alice) -> None:
    assert_problem(client.get("/v1/jobs/does-not-exist", headers=alice), 404)
    assert_problem(client.get("/v1/nothing-here", headers=alice), 404)
    assert_problem(client.delete("/v1/jobs", headers=alice), 405)


def test_malformed_json_body(client: TestClient, alice) -> None:
    response = client.post(
        "/v1/jobs", headers={**alice, "Content-Type": "application/json"}, content=b"{not json"
    )
    assert_problem(response, 422)


def test_upload_then_job_uses_dataset(client: TestClient, alice) -> None:
    dataset = upload(client, alice).json()["id"]
    job = client.post("/v1/jobs", headers=alice, json=job_body(dataset)).json()
    assert job["spec"]["data"]["dataset_id"] == dataset
