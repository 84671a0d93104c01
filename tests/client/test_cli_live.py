"""`dskd jobs …` and `dskd datasets …` against a live server, as a user types them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml
from typer.testing import CliRunner

from dskd_cli.main import app
from tests.live_service import TRAIN_LINES, LiveService


def run(live: LiveService, *args: str, input: str | None = None):
    env = {"DSKD_API_URL": live.url, "DSKD_API_KEY": live.key}
    return CliRunner().invoke(app, list(args), env=env, input=input)


def test_submit_watch_list_get_download(live: LiveService, tmp_path: Path) -> None:
    spec_file = tmp_path / "job.yaml"
    spec = live.spec("placeholder", name="cli job", steps=20)
    spec["data"] = {"path": "train.jsonl", "dev_path": "dev.jsonl"}  # as an engine spec file has it
    spec_file.write_text(yaml.safe_dump(spec))
    (tmp_path / "train.jsonl").write_text(live.data_file.read_text())
    (tmp_path / "dev.jsonl").write_text("".join(line + "\n" for line in TRAIN_LINES[:5]))

    submitted = run(live, "jobs", "submit", str(spec_file), "--set", "training.max_steps=6", "--watch")
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.strip().splitlines()[0]
    assert "status: succeeded" in submitted.output
    assert "eval @ step 6: dev_ce 2" in submitted.output
    # Both files were uploaded; the job names the dev one as its dev set.
    uploaded = {d["name"]: d for d in json.loads(run(live, "datasets", "list", "--json").stdout)}
    job = json.loads(run(live, "jobs", "get", job_id, "--json").stdout)
    assert (uploaded["train.jsonl"]["row_count"], uploaded["dev.jsonl"]["row_count"]) == (40, 5)
    assert job["dev_dataset_id"] == job["spec"]["data"]["dev_dataset_id"] == uploaded["dev.jsonl"]["id"]
    assert f"dev dataset {job['dev_dataset_id']}" in submitted.stderr

    listed = run(live, "jobs", "list")
    assert listed.exit_code == 0 and job_id in listed.stdout
    row = next(line for line in listed.stdout.splitlines() if job_id in line).split()
    assert row[3:7] == ["vanilla_kd", "succeeded", "6/6", row[6]] and row[7] == "2.0000"
    as_json = json.loads(run(live, "jobs", "list", "--json", "--status", "failed").stdout)
    assert as_json["items"] == []

    got = run(live, "jobs", "get", job_id)
    assert "status    succeeded  (attempt 1/3)" in got.stdout and "dev_ce 2" in got.stdout
    history = json.loads(run(live, "jobs", "metrics", job_id, "--json", "--max-points", "3").stdout)
    loss = next(s for s in history["series"] if s["name"] == "loss")
    assert loss["steps"] == [1, 4, 6] or loss["steps"] == [1, 3, 6]

    out = tmp_path / "download"
    downloaded = run(live, "jobs", "download", job_id, "--out", str(out), "--extract")
    assert downloaded.exit_code == 0, downloaded.output
    assert "verified" in downloaded.stderr and (out / "export" / "model.safetensors").is_file()
    assert Path(downloaded.stdout.strip()) == out / "student.tar"


def test_datasets_and_cancel(live: LiveService, tmp_path: Path) -> None:
    uploaded = run(live, "datasets", "upload", str(live.data_file), "--name", "reverse")
    assert uploaded.exit_code == 0, uploaded.output
    dataset_id = uploaded.stdout.strip()
    assert dataset_id in run(live, "datasets", "list").stdout

    dev_id = run(live, "datasets", "upload", str(live.data_file), "--name", "dev").stdout.strip()

    spec_file = tmp_path / "slow.json"
    spec_file.write_text(json.dumps(live.spec(dataset_id, name="[slow] long", steps=400)))
    both = run(live, "jobs", "submit", str(spec_file), "--dev-data", "x.jsonl", "--dev-dataset", dev_id)
    assert both.exit_code == 2 and "not both" in both.output
    submitted = run(live, "jobs", "submit", str(spec_file), "--dataset", dataset_id, "--dev-dataset", dev_id)
    job_id = submitted.stdout.strip()
    assert f"(dataset {dataset_id}, dev dataset {dev_id})" in submitted.stderr
    for used in (dataset_id, dev_id):
        refused = run(live, "datasets", "rm", used)
        assert refused.exit_code == 1 and "409 Conflict" in refused.stderr and job_id in refused.stderr

    assert run(live, "jobs", "cancel", job_id, input="n\n").exit_code == 1  # asked, declined
    cancelled = run(live, "jobs", "cancel", job_id, "--yes")
    assert cancelled.exit_code == 0 and cancelled.stdout.strip() in (
        f"job {job_id}: cancel_requested",
        f"job {job_id}: cancelled",
    )
    watched = run(live, "jobs", "watch", job_id)
    assert watched.exit_code == 1 and "status: cancelled" in watched.output
    for used in (dataset_id, dev_id):
        for _ in range(50):  # the job row may still be in use for a moment after the terminal event
            if run(live, "datasets", "rm", used).exit_code == 0:
                break
            time.sleep(0.1)
    assert run(live, "datasets", "list", "--json").stdout.strip() == "[]"


def test_errors_are_one_readable_line(live: LiveService, tmp_path: Path) -> None:
    missing = run(live, "jobs", "get", "nope")
    assert missing.exit_code == 1 and missing.stderr.startswith("error: 404 Not Found: no job 'nope'")
    env = {"DSKD_API_URL": live.url, "DSKD_API_KEY": "dskd_wrong"}
    denied = CliRunner().invoke(app, ["jobs", "list"], env=env)
    assert denied.exit_code == 1 and "401 Unauthorized" in denied.stderr
    unreachable = CliRunner().invoke(app, ["jobs", "list", "--url", "http://127.0.0.1:9", "--key", "k"])
    assert unreachable.exit_code == 1 and "cannot reach the service" in unreachable.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("distill: {method: sft}\ntraining: {max_steps: 0}\n")
    refused = run(live, "jobs", "submit", str(bad), "--dataset", "x")
    assert refused.exit_code == 1 and "422" in refused.stderr and "training.max_steps" in refused.stderr
