"""API load bench on PostgreSQL: job create/list throughput and latency against a bare one-insert FastAPI route,
and the delay from a worker appending an event to 100 SSE subscribers receiving it.

    .venv/bin/python bench/api_load.py [--clients 16] [--seconds 10] [--workers 2] [--sse-clients 100]

Loopback only; a fresh PostgreSQL database (127.0.0.1:5432, user postgres) is created and dropped. The API runs
in uvicorn subprocesses with a queue stub that drops messages (no worker). Prints a table; figures are from
this machine and this run, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"


# ------------------------------------------------------------------ apps served by uvicorn (import strings)


class DropQueue:
    """The API's queue with no broker behind it: the bench measures the API and the database only."""

    def enqueue_job(self, job_id: str, countdown: float | None = None) -> None:
        return None

    def revoke(self, job_id: str) -> None:
        return None

    def ping(self, timeout: float) -> None:
        return None


def api_app() -> Any:
    from api.main import create_app

    return create_app(queue=DropQueue())


def bare_app() -> Any:
    """The floor: a sync FastAPI route doing one INSERT through the same engine settings as the API."""
    from fastapi import FastAPI
    from sqlalchemy import text

    from api.db.session import get_engine
    from api.settings import get_settings

    engine = get_engine(get_settings().database_url)
    app = FastAPI()

    @app.post("/insert", status_code=201)
    def insert(body: dict[str, Any]) -> dict[str, int]:
        with engine.begin() as conn:
            row = conn.execute(
                text("INSERT INTO bench_rows (payload) VALUES (:p) RETURNING id"), {"p": json.dumps(body)}
            ).scalar_one()
        return {"id": row}

    return app


# ------------------------------------------------------------------ helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def start_uvicorn(target: str, port: int, workers: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "uvicorn", target, "--factory", "--app-dir", str(HERE)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    stop(proc)
    raise TimeoutError(f"{target} did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def hammer(
    port: int, clients: int, seconds: float, max_requests: int, request: Any
) -> tuple[float, list[float], int]:
    """`clients` threads, each with its own connection, calling request(client, i) until time or count runs out."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    per_client = max_requests // clients
    stop_at = time.perf_counter() + seconds

    def run(worker: int) -> None:
        nonlocal errors
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for i in range(per_client):
                if time.perf_counter() > stop_at:
                    break
                t0 = time.perf_counter()
                ok = request(client, worker * per_client + i)
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    errors += not ok

    threads = [threading.Thread(target=run, args=(w,)) for w in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started, latencies, errors


async def sse_delays(
    port: int, headers: dict[str, str], job_id: str, n_clients: int, writer: Any
) -> tuple[list[float], int]:
    """n_clients SSE subscribers; writer() appends events carrying their send time; returns the delays."""
    delays: list[float] = []
    ready = asyncio.Event()
    connected = 0

    async def subscribe(client: httpx.AsyncClient) -> None:
        nonlocal connected
        async with client.stream(
            "GET", f"/v1/jobs/{job_id}/events", headers={**headers, "Accept": "text/event-stream"}
        ) as response:
            connected += 1
            if connected == n_clients:
                ready.set()
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    event = json.loads(line[5:])
                    sent = event["payload"].get("sent_at")
                    if sent is not None:
                        delays.append(time.time() - sent)

    limits = httpx.Limits(max_connections=n_clients + 10)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120, limits=limits) as client:
        tasks = [asyncio.create_task(subscribe(client)) for _ in range(n_clients)]
        await asyncio.wait_for(ready.wait(), 60)
        await asyncio.sleep(1.0)  # let every stream finish its replay
        sent = await asyncio.to_thread(writer)
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    return delays, sent


# ------------------------------------------------------------------ the bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase")
    parser.add_argument("--max-requests", type=int, default=4000, help="per phase")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--sse-clients", type=int, default=100)
    parser.add_argument("--sse-events", type=int, default=40)
    args = parser.parse_args()

    import psycopg
    from alembic import command
    from sqlalchemy import text

    from api.cli_support import alembic_config
    from api.db.models import Job
    from api.db.session import dispose_engine, session_scope
    from api.services import events as event_service
    from api.services import jobs as job_service
    from api.services.keys import create_api_key

    name = f"dskd_bench_{uuid.uuid4().hex[:10]}"
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    data_dir = Path(f"/tmp/{name}")
    env = {
        **os.environ,
        "DSKD_DATABASE_URL": url,
        "DSKD_DATA_DIR": str(data_dir),
        "DSKD_BROKER_URL": "memory://",
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    procs: list[subprocess.Popen[bytes]] = []
    rows: list[tuple[str, str, str, str, str]] = []
    try:
        command.upgrade(alembic_config(url), "head")
        with session_scope(url) as s:
            s.execute(text("CREATE TABLE bench_rows (id BIGSERIAL PRIMARY KEY, payload JSON)"))
            s.commit()
            _, secret = create_api_key(s, "bench", "bench")
        headers = {"Authorization": f"Bearer {secret}"}

        api_port, bare_port = free_port(), free_port()
        procs.append(start_uvicorn("api_load:api_app", api_port, args.workers, env))
        procs.append(start_uvicorn("api_load:bare_app", bare_port, args.workers, env))
        dataset = httpx.post(
            f"http://127.0.0.1:{api_port}/v1/datasets",
            headers=headers,
            files={"file": ("d.jsonl", b'{"prompt": "2+2?", "response": "4"}\n', "application/jsonl")},
        ).json()["id"]
        job_body = {
            "student": {"name_or_path": "org/tiny-student"},
            "data": {"dataset_id": dataset},
            "distill": {"method": "sft"},
            "training": {"max_steps": 3, "batch_size": 2, "max_length": 64, "max_prompt_length": 32},
        }

        def create_or_list(client: httpx.Client, i: int) -> bool:
            if i % 2 == 0:
                r = client.post("/v1/jobs", headers=headers, json=job_body)
                return r.status_code == 201
            r = client.get("/v1/jobs?limit=20", headers=headers)
            return r.status_code == 200

        def bare_insert(client: httpx.Client, i: int) -> bool:
            return client.post("/insert", json={"i": i, "spec": job_body}).status_code == 201

        results = {}
        for label, port, fn in (
            ("API create+list jobs", api_port, create_or_list),
            ("bare FastAPI 1 insert", bare_port, bare_insert),
        ):
            hammer(port, args.clients, 1.0, args.clients * 4, fn)  # warm-up: connections and pools
            elapsed, lat, errors = hammer(port, args.clients, args.seconds, args.max_requests, fn)
            results[label] = len(lat) / elapsed
            rows.append(
                (
                    label,
                    f"{len(lat) / elapsed:8.1f} req/s",
                    f"p50 {percentile(lat, 50) * 1e3:6.1f} ms",
                    f"p99 {percentile(lat, 99) * 1e3:6.1f} ms",
                    f"{len(lat)} req, {errors} errors",
                )
            )
        ratio = results["API create+list jobs"] / results["bare FastAPI 1 insert"]

        with session_scope(url) as s:
            job = job_service.create_job(s, owner="bench", spec=job_body, max_attempts=3, dataset_id=dataset)
            s.commit()
            job_id = job.id

        def writer() -> int:
            # What the worker's progress sink does: append_event through the services, one session each.
            for step in range(1, args.sse_events + 1):
                with session_scope(url) as s:
                    event_service.append_event(s, job_id, "progress", {"step": step, "sent_at": time.time()})
                time.sleep(0.05)
            with session_scope(url) as s:
                job_service.request_cancel(s, s.get(Job, job_id))  # terminal: the streams end
            return args.sse_events

        delays, sent = asyncio.run(sse_delays(api_port, headers, job_id, args.sse_clients, writer))
        expected = sent * args.sse_clients
        rows.append(
            (
                f"SSE append→receive ({args.sse_clients} clients)",
                f"{len(delays)}/{expected} recv",
                f"p50 {percentile(delays, 50) * 1e3:6.1f} ms",
                f"p99 {percentile(delays, 99) * 1e3:6.1f} ms",
                f"mean {statistics.fmean(delays) * 1e3:.1f} ms",
            )
        )
    finally:
        for proc in procs:
            stop(proc)
        dispose_engine(url)
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    print(
        f"\nAPI load on PostgreSQL — {args.clients} clients, {args.workers} uvicorn workers, "
        f"{os.cpu_count()} CPUs, SSE poll interval from settings"
    )
    for row in rows:
        print("  " + " | ".join(f"{cell:<34}" if i == 0 else f"{cell:>18}" for i, cell in enumerate(row)))
    print(f"  API / bare-insert throughput ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
