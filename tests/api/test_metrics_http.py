"""GET /v1/jobs/{id}/metrics: the series are exactly the progress and eval events, downsampled on request."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.services.events import append_event
from api.services.metric_series import Series, downsample
from tests.api.conftest import assert_problem


def _fill(session, job_id: str, steps: int) -> list[dict]:
    written = []
    append_event(session, job_id, "log", {"message": "training started"})
    for step in range(1, steps + 1):
        payload = {
            "step": step,
            "total_steps": steps,
            "metrics": {"loss": 5.0 / step, "lr": 1e-3, "flag": True},
        }
        written.append(append_event(session, job_id, "progress", payload))
        if step % 5 == 0:
            written.append(
                append_event(session, job_id, "eval", {"step": step, "metrics": {"dev_ce": 3.0 - step / 10}})
            )
    return written


def test_series_match_the_events(client: TestClient, session, alice, job_id) -> None:
    written = _fill(session, job_id, 12)
    body = client.get(f"/v1/jobs/{job_id}/metrics", headers=alice).json()
    events = client.get(f"/v1/jobs/{job_id}/events", headers=alice, params={"limit": 1000}).json()["items"]
    series = {(s["kind"], s["name"]): s for s in body["series"]}
    assert set(series) == {("train", "loss"), ("train", "lr"), ("eval", "dev_ce")}  # booleans are no curve
    for kind, event_type in (("train", "progress"), ("eval", "eval")):
        chosen = [e for e in events if e["type"] == event_type]
        for (k, name), s in series.items():
            if k != kind:
                continue
            assert s["steps"] == [e["payload"]["step"] for e in chosen]
            assert s["values"] == [e["payload"]["metrics"][name] for e in chosen]
            assert len(s["times"]) == len(chosen) and s["times"] == sorted(s["times"])
    assert body["last_seq"] == written[-1].seq and body["status"] == "queued" and body["max_points"] is None


def test_downsampled_series_keep_the_ends_and_real_points(client: TestClient, session, alice, job_id) -> None:
    _fill(session, job_id, 50)
    full = client.get(f"/v1/jobs/{job_id}/metrics", headers=alice).json()
    small = client.get(f"/v1/jobs/{job_id}/metrics", headers=alice, params={"max_points": 7}).json()
    loss_full = next(s for s in full["series"] if s["name"] == "loss")
    loss = next(s for s in small["series"] if s["name"] == "loss")
    assert len(loss["steps"]) == 7 and loss["steps"][0] == 1 and loss["steps"][-1] == 50
    pairs = set(zip(loss_full["steps"], loss_full["values"], strict=True))
    assert set(zip(loss["steps"], loss["values"], strict=True)) <= pairs
    dev = next(s for s in small["series"] if s["name"] == "dev_ce")
    assert dev["steps"][0] == 5 and dev["steps"][-1] == 50 and len(dev["steps"]) == 7


def test_downsample_spacing() -> None:
    series = Series("loss", "train", list(range(100)), [0.0] * 100, [float(i) for i in range(100)])
    assert downsample(series, 5).steps == [0, 25, 50, 74, 99]
    assert downsample(series, 1).steps == [99]
    assert downsample(series, 200) is series


def test_metrics_errors(client: TestClient, alice, bob, job_id) -> None:
    assert_problem(client.get(f"/v1/jobs/{job_id}/metrics", headers=bob), 404)
    assert_problem(
        client.get(f"/v1/jobs/{job_id}/metrics", headers=alice, params={"max_points": 0}), 422, "max_points"
    )
    assert client.get(f"/v1/jobs/{job_id}/metrics", headers=alice).json()["series"] == []
