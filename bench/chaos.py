"""The fault suite: real processes, real faults, counted outcomes. It starts its own PostgreSQL and Redis on spare
ports (nothing shared with the development services), a Celery worker and the API, then runs:

  worker-kill     SIGKILL of the process training a job (mid-run, after a checkpoint), N times
  broker-restart  Redis restarted (append-only file, as in docker-compose.yml) with one job running, more queued
  broker-loss     Redis restarted with its data lost (no persistence) with one job running, more queued: the
                  queued jobs' messages are gone and must be sent again (the reaper's canary check)
  db-restart      PostgreSQL restarted during training, N trials: does the attempt survive?
  serve-kill      `dskd serve` (embedded, SQLite) killed with -9 mid-job: no orphan worker, resume on restart
  disk-full       the runs directory on a tiny filesystem: the job fails as disk_full, no partial checkpoint

Each scenario prints finished / resumed / lost / duplicated / stuck and its recovery times (seconds).

    .venv/bin/python bench/chaos.py                      # everything (make chaos)
    .venv/bin/python bench/chaos.py --only worker-kill --trials 5

Needs PostgreSQL's server binaries and redis-server (scripts/services.sh installs both) and root for the
tiny tmpfs of disk-full (skipped otherwise). Uses the toy world's fast size (built once, cached).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.conftest import free_port, service_env  # noqa: E402
from worker.serve import worker_command  # noqa: E402

# Job lengths: long enough that a fault lands mid-training on an idle machine (the toy student runs a step of
# batch 4 in a few milliseconds: a 30-step job ended before its worker could be killed), with a checkpoint every
# CHECKPOINT steps so a killed run has one to resume from.
STEPS = 1500
CHECKPOINT = 50
KILL_AFTER = 2 * CHECKPOINT + 10  # progress step at which a fault is injected: after at least one checkpoint

TERMINAL = {"succeeded", "failed", "cancelled"}


@dataclass
class Outcome:
    name: str
    finished: int = 0
    resumed: int = 0
    lost: int = 0
    duplicated: int = 0
    stuck: int = 0
    recovery_s: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        rec = self.recovery_s
        times = (
            f"recovery median {statistics.median(rec):.1f} s (min {min(rec):.1f}, max {max(rec):.1f}, n={len(rec)})"
            if rec
            else "recovery -"
        )
        return (
            f"{self.name:15s} finished {self.finished}  resumed {self.resumed}  lost {self.lost}  "
            f"duplicated {self.duplicated}  stuck {self.stuck}  {times}"
        )


# ------------------------------------------------------------------------------------ private services


class Postgres:
    def __init__(self, root: Path) -> None:
        self.dir, self.port = root / "pg", free_port()
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
        if not bins:
            raise SystemExit("PostgreSQL server binaries not found (scripts/services.sh installs them)")
        self.bin = bins[-1]
        self.dir.mkdir(parents=True)
        shutil.chown(self.dir, "postgres", "postgres")
        self._as_postgres([str(self.bin / "initdb"), "-D", str(self.dir), "-U", "postgres", "--auth=trust"])
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, argv: list[str]) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        # No pipes: the server pg_ctl starts would inherit them and keep them open.
        subprocess.run(
            prefix + argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120
        )

    def _ctl(self, action: str) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=200"
        self._as_postgres(
            [str(self.bin / "pg_ctl"), "-D", str(self.dir), "-o", opts, "-w", "-m", "fast", action]
        )

    def start(self) -> None:
        self._ctl("start")

    def restart(self) -> None:
        self._ctl("restart")

    def stop(self) -> None:
        self._ctl("stop")


class Redis:
    def __init__(self, root: Path) -> None:
        self.dir, self.port = root / "redis", free_port()
        self.dir.mkdir(parents=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        argv += ["--appendonly", "yes", "--save", ""]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                import redis

                redis.Redis(port=self.port).ping()
                return
            except Exception:
                time.sleep(0.1)
        raise RuntimeError("redis did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # SIGTERM: redis flushes its append-only file and exits
            self.proc.wait(timeout=30)

    def restart(self, lose_data: bool = False) -> None:
        self.stop()
        if lose_data:  # what a restart without persistence leaves: an empty server
            for path in self.dir.rglob("*"):
                if path.is_file():
                    path.unlink()
        self.start()


# ------------------------------------------------------------------------------------ the service


class Stack:
    """API (uvicorn) + one Celery worker on the private PostgreSQL and Redis, the toy world as models root."""

    def __init__(self, root: Path, pg: Postgres, redis: Redis, world: Any, **settings: str) -> None:
        self.root, self.world = root, world
        self.env = service_env(
            data_dir=str(root / "data"),
            database_url=pg.url,
            broker_url=redis.url,
            models_root=str(world.root),
            event_min_interval_seconds="0.5",
            **settings,
        )
        self.env["OMP_NUM_THREADS"] = "1"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=self.env, check=True,
                       capture_output=True)  # fmt: skip
        api = [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory", "--port", str(self.port)]
        self.procs.append(self._spawn("api", api))
        self.procs.append(self._spawn("worker", worker_command(loglevel="INFO", hostname="chaos@%h")))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        key = subprocess.run([sys.executable, "-m", "dskd_cli", "keys", "create", f"chaos-{time.time_ns()}"],
                             cwd=ROOT, env=self.env, capture_output=True, text=True, check=True)  # fmt: skip
        self.client = httpx.Client(base_url=self.base, timeout=30,
                                   headers={"Authorization": f"Bearer {key.stdout.strip().splitlines()[-1]}"})  # fmt: skip
        upload = self.client.post(
            "/v1/datasets", files={"file": ("train.jsonl", self.world.train.read_bytes())}
        )
        upload.raise_for_status()
        self.dataset = upload.json()["id"]

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("ab")
        return subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    def submit(self, steps: int = STEPS, **training: Any) -> str:
        spec = {
            "student": {"name_or_path": "student"},
            "data": {"dataset_id": self.dataset},
            "distill": {"method": "sft"},
            "training": {"max_steps": steps, "batch_size": 4, "max_length": 48, "max_prompt_length": 32,
                         "lr": 1e-3, "checkpoint_interval": CHECKPOINT, **training},
        }  # fmt: skip
        response = self.client.post("/v1/jobs", json=spec)
        response.raise_for_status()
        return response.json()["id"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self.client.get(f"/v1/jobs/{job_id}").json()

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return self.client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["items"]


def wait(predicate: Any, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    return False


def holder_pid(sessions_url: str, job_id: str) -> int | None:
    from sqlalchemy import create_engine, text

    engine = create_engine(sessions_url)
    with engine.connect() as conn:
        owner = conn.execute(text("SELECT lease_owner FROM jobs WHERE id = :id"), {"id": job_id}).scalar()
    engine.dispose()
    return int(owner.split(":")[1]) if owner else None


def tally(stack: Stack, outcome: Outcome, job_ids: list[str], timeout: float) -> None:
    """Wait for the jobs to end; count finished, resumed, stuck, and duplicated (a job that trained a step twice
    in parallel shows two claims with interleaved progress: counted by claims without a death between)."""
    wait(lambda: all(stack.job(j)["status"] in TERMINAL for j in job_ids), timeout, interval=1.0)
    for job_id in job_ids:
        job = stack.job(job_id)
        events = stack.events(job_id)
        if job["status"] == "succeeded":
            outcome.finished += 1
        elif job["status"] not in TERMINAL:
            outcome.stuck += 1
        else:
            outcome.lost += 1
            outcome.notes.append(f"{job_id}: {job['status']} {job.get('error')}")
        if any("resumed from" in (e["payload"].get("message") or "") for e in events):
            outcome.resumed += 1
        finals = [e for e in events if e["type"] == "artifact"]
        if len(finals) > 1:
            outcome.duplicated += 1


# ------------------------------------------------------------------------------------ scenarios


def worker_kill(stack: Stack, pg: Postgres, trials: int) -> Outcome:
    outcome = Outcome("worker-kill")
    jobs = []
    for _ in range(trials):
        job_id = stack.submit()
        jobs.append(job_id)
        ok = wait(
            lambda job_id=job_id: (stack.job(job_id)["progress"].get("step") or 0) >= KILL_AFTER, 300
        )  # after a checkpoint
        pid = holder_pid(pg.url, job_id) if ok else None
        if pid is None or stack.job(job_id)["status"] != "running":
            outcome.notes.append(f"{job_id}: not running at step {KILL_AFTER}: no kill")
            continue
        attempt = stack.job(job_id)["attempt"]
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()

        def claimed_again(job_id: str = job_id, attempt: int = attempt) -> bool:
            job = stack.job(job_id)
            return job["attempt"] > attempt and job["status"] == "running"

        if wait(claimed_again, 600):
            outcome.recovery_s.append(time.monotonic() - killed)
        wait(lambda job_id=job_id: stack.job(job_id)["status"] in TERMINAL, 600, interval=1.0)
    tally(stack, outcome, jobs, 600)
    return outcome


def broker_restart(stack: Stack, redis: Redis, queued: int) -> Outcome:
    outcome = Outcome("broker-restart")
    jobs = [stack.submit(steps=STEPS // 3) for _ in range(queued + 1)]
    wait(lambda: stack.job(jobs[0])["status"] == "running", 300)
    redis.restart()
    restarted = time.monotonic()
    if wait(lambda: all(stack.job(j)["status"] in TERMINAL for j in jobs[1:2]), 900, interval=1.0):
        outcome.recovery_s.append(time.monotonic() - restarted)  # until the first queued job has run
    tally(stack, outcome, jobs, 1800)
    return outcome


def broker_loss(stack: Stack, redis: Redis, queued: int) -> Outcome:
    """Recovery: from the restart until the lost jobs are back in the broker's queue (or already claimed)."""
    outcome = Outcome("broker-loss")
    jobs = [stack.submit(steps=STEPS // 3) for _ in range(queued + 1)]
    wait(lambda: stack.job(jobs[0])["status"] == "running", 300)
    waiting = [j for j in jobs if stack.job(j)["status"] == "queued"]
    outcome.notes.append(f"{len(waiting)} jobs queued when Redis lost its data")
    redis.restart(lose_data=True)
    restarted = time.monotonic()
    import redis as redis_client

    broker = redis_client.Redis(port=redis.port)

    def back_in_queue() -> bool:
        unclaimed = sum(stack.job(j)["status"] == "queued" for j in waiting)
        return unclaimed == 0 or broker.llen("celery") >= unclaimed

    if waiting and wait(back_in_queue, 900, interval=0.5):
        outcome.recovery_s.append(time.monotonic() - restarted)
    tally(stack, outcome, jobs, 1800)
    outcome.notes.append(f"all jobs ended {time.monotonic() - restarted:.0f} s after the restart")
    return outcome


def db_restart(stack: Stack, pg: Postgres, trials: int) -> Outcome:
    outcome = Outcome("db-restart")
    jobs = []
    for _ in range(trials):
        job_id = stack.submit()
        jobs.append(job_id)
        if not wait(
            lambda job_id=job_id: (stack.job(job_id)["progress"].get("step") or 0) >= KILL_AFTER, 300
        ):
            outcome.notes.append(f"{job_id}: never started")
            continue
        if stack.job(job_id)["status"] != "running":
            outcome.notes.append(f"{job_id}: ended before the restart: no trial")
            continue
        started = time.monotonic()
        pg.restart()
        outcome.notes.append(f"{job_id}: PostgreSQL down {time.monotonic() - started:.1f} s")
        wait(lambda job_id=job_id: stack.job(job_id)["status"] in TERMINAL, 600, interval=1.0)
        job = stack.job(job_id)
        if job["status"] == "succeeded" and job["attempt"] == 1:
            outcome.notes.append(f"{job_id}: attempt survived")
    tally(stack, outcome, jobs, 600)
    survived = sum("attempt survived" in n for n in outcome.notes)
    outcome.notes.append(f"attempt survived the restart in {survived} of {trials} trials")
    return outcome


def serve_kill(root: Path, world: Any) -> Outcome:
    outcome = Outcome("serve-kill")
    data = root / "embedded"
    env = service_env(data_dir=str(data), models_root=str(world.root), event_min_interval_seconds="0.5")
    env["OMP_NUM_THREADS"] = "1"

    def start() -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        log = (root / "serve.log").open("ab")
        proc = subprocess.Popen([sys.executable, "-m", "dskd_cli", "serve", "--port", str(port)], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        wait(lambda: httpx.get(f"{base}/readyz", timeout=2).status_code == 200, 90)
        return proc, base

    key = subprocess.run([sys.executable, "-m", "dskd_cli", "keys", "create", "chaos-serve"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]  # fmt: skip
    headers = {"Authorization": f"Bearer {key}"}
    proc, base = start()
    client = httpx.Client(base_url=base, headers=headers, timeout=30)
    dataset = client.post("/v1/datasets", files={"file": ("t.jsonl", world.train.read_bytes())}).json()["id"]
    spec = {"student": {"name_or_path": "student"}, "data": {"dataset_id": dataset}, "distill": {"method": "sft"},
            "training": {"max_steps": STEPS, "batch_size": 4, "max_length": 48, "max_prompt_length": 32,
                         "checkpoint_interval": CHECKPOINT}}  # fmt: skip
    job_id = client.post("/v1/jobs", json=spec).json()["id"]
    wait(lambda: (client.get(f"/v1/jobs/{job_id}").json()["progress"].get("step") or 0) >= KILL_AFTER, 300)
    if client.get(f"/v1/jobs/{job_id}").json()["status"] != "running":
        outcome.notes.append(f"{job_id}: ended before the kill: no trial")
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        return outcome
    worker_pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == proc.pid]
    os.kill(proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    orphans_gone = wait(lambda: not any(_alive(pid) for pid in worker_pids), 15)
    outcome.notes.append(
        f"worker processes gone {time.monotonic() - killed:.1f} s after kill -9: {orphans_gone}"
    )
    if not orphans_gone:
        outcome.duplicated += 1  # a restart would run a second worker next to the orphan
    proc, base = start()
    client = httpx.Client(base_url=base, headers=headers, timeout=30)
    attempt = 1
    if wait(lambda: client.get(f"/v1/jobs/{job_id}").json()["attempt"] > attempt, 600):
        outcome.recovery_s.append(time.monotonic() - killed)
    wait(lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] in TERMINAL, 600, interval=1.0)
    job = client.get(f"/v1/jobs/{job_id}").json()
    events = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["items"]
    outcome.finished += job["status"] == "succeeded"
    outcome.stuck += job["status"] not in TERMINAL
    outcome.lost += job["status"] in {"failed", "cancelled"}
    outcome.resumed += any("resumed from" in (e["payload"].get("message") or "") for e in events)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    return outcome


def _ppid(proc_dir: Path) -> int | None:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def disk_full(root: Path, pg: Postgres, redis: Redis, world: Any) -> Outcome:
    outcome = Outcome("disk-full")
    runs = root / "tiny-runs"
    runs.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(runs)], capture_output=True
    ).returncode:
        outcome.notes.append("skipped: cannot mount a tmpfs (needs root)")
        return outcome
    stack = Stack(root / "df", pg, redis, world, runs_dir=str(runs))
    (root / "df").mkdir()
    try:
        stack.start()
        job_id = stack.submit(steps=8)
        wait(lambda: stack.job(job_id)["status"] in TERMINAL, 300, interval=1.0)
        job = stack.job(job_id)
        partial = (
            [p.name for p in (runs / job_id / "checkpoints").glob(".tmp-*")]
            if (runs / job_id).exists()
            else []
        )
        code = (job.get("error") or {}).get("code")
        outcome.notes.append(f"status {job['status']}, code {code}, partial checkpoints left: {len(partial)}")
        outcome.finished += code == "disk_full" and not partial  # the expected, clean failure
        outcome.lost += code != "disk_full"
    finally:
        stack.stop()
        subprocess.run(["umount", "-l", str(runs)], check=False)
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", action="append", help="run only these scenarios (repeatable)")
    parser.add_argument("--trials", type=int, default=3, help="worker kills and database restarts")
    parser.add_argument("--queued", type=int, default=3, help="queued jobs during the broker restart")
    args = parser.parse_args()
    wanted = set(
        args.only or ["worker-kill", "broker-restart", "broker-loss", "db-restart", "serve-kill", "disk-full"]
    )
    from dskd_core.toy import build_toy_world

    world = build_toy_world(ROOT / ".pytest_cache" / "d" / "toy_world", size="fast", seed=0)
    root = Path(tempfile.mkdtemp(prefix="dskd-chaos-"))
    os.chmod(root, 0o755)
    pg, redis = Postgres(root), Redis(root)
    pg.start()
    redis.start()
    results: list[Outcome] = []
    stack = Stack(root / "svc", pg, redis, world)
    (root / "svc").mkdir()
    try:
        if wanted & {"worker-kill", "broker-restart", "broker-loss", "db-restart"}:
            stack.start()
        if "worker-kill" in wanted:
            results.append(worker_kill(stack, pg, args.trials))
        if "db-restart" in wanted:
            results.append(db_restart(stack, pg, args.trials))
        if "broker-restart" in wanted:
            results.append(broker_restart(stack, redis, args.queued))
        if "broker-loss" in wanted:
            results.append(broker_loss(stack, redis, args.queued))
        stack.stop()
        if "serve-kill" in wanted:
            results.append(serve_kill(root, world))
        if "disk-full" in wanted:
            results.append(disk_full(root, pg, redis, world))
    finally:
        stack.stop()
        redis.stop()
        pg.stop()
    print(f"\nchaos results (load {os.getloadavg()[0]:.1f}, logs in {root}):")
    for outcome in results:
        print(outcome.line())
        for note in outcome.notes:
            print(f"    {note}")
    print(json.dumps([o.__dict__ for o in results]))


if __name__ == "__main__":
    main()
