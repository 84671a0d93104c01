"""Concurrency under load: N mixed requests at once and M Server-Sent Events subscribers, against a real API
process (uvicorn) on PostgreSQL or SQLite, while events are written to the streamed jobs. Counts 5xx answers
and transport errors, checks every subscriber received every event in order and saw its stream end, and prints
latencies. The default test run calls `run` (tests/api/test_concurrency.py); from the command line:

    .venv/bin/python bench/concurrency.py --db postgresql --requests 500 --sse 200
    .venv/bin/python bench/concurrency.py --db sqlite --requests 500 --sse 200

Figures are from this machine and this run (print `uptime` next to them), not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
TENANTS = 10  # 20 streams each: the default per-key limit
LINE = b'{"prompt": "2+2?", "response": "4"}\n'


@dataclass
class LoadResult:
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    sse_complete: int = 0
    sse_problems: list[str] = field(default_factory=list)
    sse_first_byte: list[float] = field(default_factory=list)
    # From the API's Server-Timing header: seconds waiting for an admission slot, and being worked on.
    admit: list[float] = field(default_factory=list)
    app: list[float] = field(default_factory=list)
    api_cpu_s: float | None = None  # CPU time the API process used (user + system) over the whole run
    client_cpu_s: float = 0.0  # CPU time this process (the clients) used while driving the load
    seconds: float = 0.0

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def summary(self) -> dict[str, Any]:
        def pct(p: float, values: list[float] = self.latencies) -> float:
            lat = sorted(values)
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 3) if lat else 0.0

        return {
            "requests": len(self.latencies),
            "statuses": dict(sorted(self.statuses.items())),
            "5xx": self.server_errors,
            "transport_errors": len(self.errors),
            "latency_s": {"p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99), "max": pct(1.0)},
            # The server's share (Server-Timing): the rest of a latency is the client, the connection and
            # the event loop before the request reached the admission middleware.
            "server_admit_wait_s": {"p50": pct(0.5, self.admit), "p95": pct(0.95, self.admit)},
            "server_app_s": {"p50": pct(0.5, self.app), "p95": pct(0.95, self.app)},
            "sse_complete": self.sse_complete,
            "sse_problems": len(self.sse_problems),
            "sse_connect_p95_s": round(sorted(self.sse_first_byte)[int(0.95 * len(self.sse_first_byte))], 3)
            if self.sse_first_byte
            else None,
            "wall_s": round(self.seconds, 2),
            "api_cpu_s": self.api_cpu_s,
            "client_cpu_s": round(self.client_cpu_s, 2),
        }


# --------------------------------------------------------------------------------------------- the server


def start_server(
    database_url: str,
    data_dir: Path,
    port: int,
    log_path: Path,
    *,
    access_log: bool = False,
    key_cache: bool = True,
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSKD_")}
    env.update(
        DSKD_KEY_CACHE=str(key_cache).lower(),
        DSKD_DATABASE_URL=database_url,
        DSKD_BROKER_URL="memory://",  # messages go nowhere: this measures the API and the database
        DSKD_DATA_DIR=str(data_dir),
        DSKD_API_REAPER="false",
        DSKD_SSE_KEEPALIVE_SECONDS="5",
    )
    argv = [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory", "--port", str(port)]
    argv += ["--log-level", "info" if access_log else "warning", "--timeout-keep-alive", "30"]
    return subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log_path.open("wb"), stderr=subprocess.STDOUT)


def wait_ready(base_url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited with {proc.returncode}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("the API did not start")


def seed(base_url: str, database_url: str) -> list[dict[str, str]]:
    """TENANTS tenants with a key, a dataset and one queued job each."""
    from api.db.session import session_scope
    from api.services.keys import create_api_key

    tenants = []
    with session_scope(database_url) as session:
        for i in range(TENANTS):
            _, secret = create_api_key(session, f"load-{i}-{random.getrandbits(32):x}", f"load-{i}")
            tenants.append({"key": secret})
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for tenant in tenants:
            headers = {"Authorization": f"Bearer {tenant['key']}"}
            dataset = client.post("/v1/datasets", headers=headers, files={"file": ("d.jsonl", LINE * 4)})
            dataset.raise_for_status()
            tenant["dataset"] = dataset.json()["id"]
            job = client.post("/v1/jobs", headers=headers, json=job_spec(tenant["dataset"]))
            job.raise_for_status()
            tenant["job"] = job.json()["id"]
    return tenants


def job_spec(dataset_id: str) -> dict[str, Any]:
    return {
        "student": {"name_or_path": "org/student"},
        "data": {"dataset_id": dataset_id},
        "distill": {"method": "sft"},
        "training": {"max_steps": 2, "batch_size": 2, "max_length": 64, "max_prompt_length": 32},
    }


def write_events(database_url: str, job_ids: list[str], events_per_job: int, start: threading.Event) -> None:
    """What workers do meanwhile: progress events on every streamed job, then its terminal status."""
    from api.db.models import Job
    from api.db.session import session_scope
    from api.services.events import append_event
    from api.services.jobs import transition

    start.wait()
    for step in range(1, events_per_job + 1):
        time.sleep(0.3)
        with session_scope(database_url) as session:
            for job_id in job_ids:
                append_event(session, job_id, "progress", {"step": step, "total_steps": events_per_job})
    with session_scope(database_url) as session:
        for job_id in job_ids:
            transition(session, session.get(Job, job_id), "cancelled")


# --------------------------------------------------------------------------------------------- the clients


async def _request(client: httpx.AsyncClient, result: LoadResult, method: str, url: str, **kw: Any) -> None:
    started = time.monotonic()
    try:
        response = await client.request(method, url, **kw)
        result.statuses[response.status_code] += 1
        _server_timing(result, response.headers.get("server-timing", ""))
        if response.status_code >= 500:
            result.errors.append(f"{method} {url}: {response.status_code} {response.text[:200]}")
    except httpx.HTTPError as e:
        result.errors.append(f"{method} {url}: {type(e).__name__} {e}")
    finally:
        result.latencies.append(time.monotonic() - started)


def _server_timing(result: LoadResult, header: str) -> None:
    parts = dict(p.strip().split(";dur=", 1) for p in header.split(",") if ";dur=" in p)
    if "admit" in parts and "app" in parts:
        result.admit.append(float(parts["admit"]) / 1000)
        result.app.append(float(parts["app"]) / 1000)


async def _subscribe(
    client: httpx.AsyncClient, result: LoadResult, tenant: dict[str, str], expected: int, timeout: float
) -> None:
    headers = {"Authorization": f"Bearer {tenant['key']}", "Accept": "text/event-stream"}
    seqs: list[int] = []
    started = time.monotonic()
    try:
        async with client.stream(
            "GET", f"/v1/jobs/{tenant['job']}/events", headers=headers, timeout=timeout
        ) as r:
            result.sse_first_byte.append(time.monotonic() - started)
            if r.status_code != 200:
                result.statuses[r.status_code] += 1
                result.sse_problems.append(f"status {r.status_code}: {(await r.aread())[:200]!r}")
                return
            async for line in r.aiter_lines():
                if line.startswith("id:"):
                    seqs.append(int(line[3:].strip()))
    except httpx.HTTPError as e:
        result.sse_problems.append(f"{type(e).__name__}: {e}")
        return
    if seqs == list(range(1, expected + 1)):
        result.sse_complete += 1
    else:
        result.sse_problems.append(f"job {tenant['job']}: got {seqs[:5]}…{seqs[-3:]} of {expected}")


def _mixed(tenants: list[dict[str, str]], n: int) -> list[tuple[str, str, dict[str, Any]]]:
    """n requests across tenants: reads of every kind and some submissions (within the queued-jobs quota)."""
    plan = []
    for i in range(n):
        tenant = tenants[i % len(tenants)]
        h = {"headers": {"Authorization": f"Bearer {tenant['key']}"}}
        kind = i % 10
        if kind in (0, 1, 2):
            plan.append(("GET", f"/v1/jobs/{tenant['job']}", h))
        elif kind in (3, 4):
            plan.append(("GET", "/v1/jobs?limit=20", h))
        elif kind == 5:
            plan.append(("GET", f"/v1/jobs/{tenant['job']}/events?after_seq=0", h))
        elif kind == 6:
            plan.append(("GET", "/v1/datasets", h))
        elif kind == 7:
            plan.append(("POST", "/v1/jobs", {**h, "json": job_spec(tenant["dataset"])}))
        elif kind == 8:
            plan.append(("GET", f"/v1/datasets/{tenant['dataset']}", h))
        else:
            plan.append(("GET", "/readyz", {}))
    return plan


async def _drive(base_url: str, tenants: list[dict[str, str]], requests: int, sse: int, events: int,
                 start_writes: threading.Event, timeout: float) -> LoadResult:  # fmt: skip
    result = LoadResult()
    limits = httpx.Limits(max_connections=requests + sse + 10, max_keepalive_connections=requests + sse + 10)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as client:
        started = time.monotonic()
        subscribers = [
            asyncio.create_task(_subscribe(client, result, tenants[i % len(tenants)], events + 2, timeout))
            for i in range(sse)
        ]
        await asyncio.sleep(0.5)
        start_writes.set()
        await asyncio.gather(
            *(_request(client, result, m, u, **kw) for m, u, kw in _mixed(tenants, requests))
        )
        await asyncio.gather(*subscribers)
        result.seconds = time.monotonic() - started
    return result


def run(database_url: str, data_dir: Path, *, requests: int = 500, sse: int = 200, events: int = 5,
        timeout: float = 120.0, key_cache: bool = True) -> LoadResult:  # fmt: skip
    """The whole scenario against a fresh API process; the database must be migrated already."""
    from tests.e2e.conftest import free_port

    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = start_server(database_url, data_dir, port, data_dir / "api.log", key_cache=key_cache)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, proc)
        tenants = seed(base_url, database_url)
        spy = None
        if os.environ.get(
            "BENCH_PY_SPY"
        ):  # a flame graph of the API process during the load: BENCH_PY_SPY=a.svg
            spy = subprocess.Popen(
                ["py-spy", "record", "-r", "50", "-p", str(proc.pid), "-o", os.environ["BENCH_PY_SPY"]]
            )
        start = threading.Event()
        # Each job: queued (1), the writer's progress events, cancelled (the terminal event).
        writer = threading.Thread(
            target=write_events, args=(database_url, [t["job"] for t in tenants], events, start), daemon=True
        )
        writer.start()
        cpu = time.process_time()
        result = asyncio.run(_drive(base_url, tenants, requests, sse, events, start, timeout))
        result.client_cpu_s = time.process_time() - cpu
        writer.join(timeout=60)
        result.api_cpu_s = _cpu_seconds(proc.pid)
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output when interrupted
            spy.wait(timeout=60)
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


def main() -> None:
    sys.path.insert(0, str(ROOT))  # the test helpers (free ports, a scratch PostgreSQL database)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--sse", type=int, default=200)
    parser.add_argument(
        "--no-key-cache", action="store_true", help="verify the API key in the database on every request"
    )
    args = parser.parse_args()
    options = {"requests": args.requests, "sse": args.sse, "key_cache": not args.no_key_cache}
    import tempfile

    from alembic import command

    from api.cli_support import alembic_config

    with tempfile.TemporaryDirectory() as tmp:
        if args.db == "sqlite":
            url = f"sqlite:///{Path(tmp) / 'dskd.db'}"
            command.upgrade(alembic_config(url), "head")
            result = run(url, Path(tmp) / "data", **options)
        else:
            from tests.api.conftest import create_pg_database, drop_pg_database

            name, url = create_pg_database()
            try:
                command.upgrade(alembic_config(url), "head")
                result = run(url, Path(tmp) / "data", **options)
            finally:
                drop_pg_database(name, url)
    summary = {
        "db": args.db,
        "key_cache": options["key_cache"],
        "load": os.getloadavg()[0],
        **result.summary(),
    }
    print(json.dumps(summary, indent=2))
    for line in (result.errors + result.sse_problems)[:10]:
        print("  ", line)


if __name__ == "__main__":
    main()
