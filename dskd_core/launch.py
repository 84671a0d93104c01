"""One job on several processes: `run_job` hands a job with `training.num_processes` > 1 to `run_in_processes`.

The caller's process starts N training processes (spawned, so nothing of the caller's threads or CUDA state is
inherited), each with the environment `torch.distributed` and `accelerate` read (MASTER_ADDR/PORT, RANK,
WORLD_SIZE, LOCAL_RANK): `accelerate` then runs DDP over gloo on CPUs or NCCL on GPUs. The caller stays the one
the job talks to: rank 0's progress events come back over a queue and go to the caller's sink, the caller polls its
cancel token and raises a shared flag the processes check (all together) every step, and rank 0's result — or the
first error of any rank, re-raised as the same exception — is what `run_job` returns.

Already inside a distributed launch (`accelerate launch`, torchrun: WORLD_SIZE > 1 in the environment), `run_job`
runs directly as one rank of it; that is how several machines run one job (docs/design.md, "Several processes").
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import socket
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dskd_core.progress import CancelToken, ProgressEvent, ProgressSink, RunResult

log = logging.getLogger(__name__)
_POLL_SECONDS = 0.5
_GRACE_SECONDS = 30.0  # after an error or the result: how long the other ranks get to exit by themselves


def in_distributed_launch() -> bool:
    """True inside a process that a distributed launcher started (this process is one rank of a job)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class _QueueSink:
    """Rank 0's sink: events go to the caller's process."""

    def __init__(self, events: Any) -> None:
        self.events = events

    def emit(self, event: ProgressEvent) -> None:
        self.events.put(("event", event))


class _StopFlag:
    """The ranks' cancel token: the caller's flag, or the caller's death (an orphaned job checkpoints and stops)."""

    def __init__(self, stop: Any, parent: int) -> None:
        self.stop, self.parent = stop, parent

    def cancelled(self) -> bool:
        return self.stop.is_set() or os.getppid() != self.parent


def run_in_processes(
    spec: Any,
    run_dir: Path,
    *,
    num_processes: int,
    sink: ProgressSink,
    cancel: CancelToken,
    device: str | None,
    teacher_cache: Any | None,
    gpus: Sequence[int] | None = None,
) -> RunResult:
    """Run `spec` on `num_processes` processes (GPUs `gpus`, or the visible ones; CPUs with device "cpu")."""
    import multiprocessing

    import torch

    cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
    if not cpu and device not in (None, "cuda"):
        raise ValueError(
            f"device {device!r} names one GPU: a multi-process job runs on `gpus` (or all visible)"
        )
    if not cpu:
        visible = list(gpus) if gpus is not None else list(range(torch.cuda.device_count()))
        if len(visible) < num_processes:
            raise ValueError(f"{num_processes} processes asked, but only {len(visible)} GPUs are available")
        gpus = visible[:num_processes]
    ctx = multiprocessing.get_context("spawn")
    events, stop = ctx.Queue(), ctx.Event()
    base_env = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": str(num_processes),
    }
    base_env["LOCAL_WORLD_SIZE"] = str(num_processes)
    if not cpu:
        base_env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    elif "OMP_NUM_THREADS" not in os.environ:  # share the cores instead of each rank taking all of them
        base_env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // num_processes))
    processes = []
    for rank in range(num_processes):
        env = base_env | {"RANK": str(rank), "LOCAL_RANK": str(rank)}
        args = (
            spec.to_json(),
            str(run_dir),
            "cpu" if cpu else None,
            teacher_cache,
            env,
            events,
            stop,
            os.getpid(),
        )
        process = ctx.Process(target=_rank_main, args=args, name=f"dskd-rank{rank}", daemon=True)
        process.start()
        processes.append(process)
    succeeded = False
    try:
        result = _supervise(processes, events, stop, sink, cancel)
        succeeded = True
        return result
    finally:
        _stop_all(processes, wait=_GRACE_SECONDS if succeeded else 5.0)


def _supervise(processes: list, events: Any, stop: Any, sink: ProgressSink, cancel: CancelToken) -> RunResult:
    """Forward events, relay cancellation, and wait for rank 0's result or the first error."""
    result: RunResult | None = None
    error: BaseException | None = None
    finished_at: float | None = None
    while True:
        try:
            kind, payload = events.get(timeout=_POLL_SECONDS)
        except queue.Empty:
            kind, payload = None, None
        if kind == "event":
            sink.emit(payload)
        elif kind == "result":
            result, finished_at = payload, time.monotonic()
        elif kind == "error" and error is None:
            error, finished_at = payload, time.monotonic()
            stop.set()  # the other ranks may wait in a collective for the failed one: they will be stopped
        if not stop.is_set() and cancel.cancelled():
            stop.set()
        alive = [p for p in processes if p.is_alive()]
        if not alive and kind is None:
            break
        if finished_at is not None and time.monotonic() - finished_at > _GRACE_SECONDS:
            break
        if result is None and error is None and any(p.exitcode not in (None, 0) for p in processes):
            dead = next(p for p in processes if p.exitcode not in (None, 0))
            error, finished_at = (
                RuntimeError(f"training process {dead.name} died (exit code {dead.exitcode})"),
                0.0,
            )
    if error is not None:
        raise error
    if result is None:
        codes = [p.exitcode for p in processes]
        raise RuntimeError(f"the training processes ended without a result (exit codes {codes})")
    return result


def _rank_main(
    spec_json: str,
    run_dir: str,
    device: str | None,
    teacher_cache: Any,
    env: dict[str, str],
    events: Any,
    stop: Any,
    parent: int,
) -> None:
    """One rank: run the job with the distributed environment set, report the result or the error."""
    os.environ.update(env)
    rank = int(env["RANK"])
    try:
        from dskd_core.progress import NullSink
        from dskd_core.spec import JobSpec
        from dskd_core.train import run_job

        sink = _QueueSink(events) if rank == 0 else NullSink()
        result = run_job(
            JobSpec.model_validate_json(spec_json),
            run_dir,
            sink=sink,
            cancel=_StopFlag(stop, parent),
            device=device,
            teacher_cache=teacher_cache,
        )
        if rank == 0:
            events.put(("result", result))
    except BaseException as exc:  # every failure must reach the caller, whatever its kind
        events.put(("error", _portable(exc, rank)))
    finally:
        _destroy_process_group()


def _portable(exc: BaseException, rank: int) -> BaseException:
    """The exception itself when it survives pickling (so callers can tell its kind), with the rank's traceback."""
    trace = "".join(traceback.format_exception(exc))
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"training process {rank} failed: {type(exc).__name__}: {exc}\n{trace}")
    exc.__notes__ = [*getattr(exc, "__notes__", []), f"in training process {rank}:\n{trace}"]
    return exc


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _stop_all(processes: list, wait: float) -> None:
    """Join the ranks; those still running after `wait` seconds (e.g. stuck in a collective) are terminated."""
    deadline = time.monotonic() + wait
    for p in processes:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    for p in processes:
        if p.is_alive():
            log.warning("terminating training process %s", p.name)
            p.terminate()
            p.join(timeout=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
