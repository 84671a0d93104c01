"""Training throughput of the distillation methods against SFT, with and without a warm teacher cache.

    .venv/bin/python bench/throughput.py              # fast toy world, batch 16, 5 rounds of 10 steps per setting
    .venv/bin/python bench/throughput.py --world full # the full toy world (a larger teacher)
    .venv/bin/python bench/throughput.py --quick      # smoke run: 1 round of 1 step

Settings: `sft`, then `vanilla_kd`, `dskd` and `dskd_eta` (the cross-vocabulary student) each twice: `live`
(the teacher runs in every step, `training.teacher_cache: off`) and `cache` (the teacher's hidden states are read
from a teacher cache built before the measurement: a warm cache, what later epochs, resumed runs and other jobs on
the same teacher and data see). Every setting is one training run of the toy world's demo spec (batch 16, prompt
≤ 64, ≤ 128 tokens, fp32) set up in this one process, so what is timed is the optimizer step itself: collating
the micro-batch (and reading the cache), forward, backward, clipping and the AdamW update.

Measurement: after one untimed warm-up step per setting, `--rounds` rounds each run `--steps` steps of every
setting in turn (the order rotates by one each round), so a change in the machine's load hits every setting
alike. Per setting: wall seconds and process CPU seconds per step (one torch thread by default: on a shared
machine the CPU time still measures the work where the wall time also counts the other processes), student
tokens per second, and the ratios to SFT of the same student (`sft`, and `sft cross` for dskd_eta's
cross-vocabulary student, whose tokenizer gives other sequence lengths), computed round by round (a setting's
time ÷ its SFT's in the same round) and reported as the median over the rounds. The target (issue 8): with a warm cache, a KD/DSKD step ≤ 1.3× SFT.

The cache's bytes per token are the shard files on disk ÷ the teacher positions they hold (the payload is
hidden size × 4 bytes in fp32, × 2 in bf16; the rest is the safetensors header with the example keys).
Results are also appended to `--log` as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METHODS = ("vanilla_kd", "dskd", "dskd_eta")
CROSS = ("dskd_eta",)
TARGET = 1.3


@dataclass
class Setting:
    name: str
    method: str
    cached: bool
    cross: bool = False  # the cross-vocabulary student (dskd_eta's, and its SFT baseline)
    run: Any = None
    batches: Any = None
    cache_status: str = "-"
    cache_metrics: dict[str, float] = field(default_factory=dict)
    setup_seconds: float = 0.0
    wall: list[float] = field(default_factory=list)  # seconds per step, one value per round
    cpu: list[float] = field(default_factory=list)
    tokens: list[float] = field(default_factory=list)  # student tokens per step, one value per round


class EventLog:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def emit(self, event: Any) -> None:
        self.events.append(event)


def make_spec(
    world: Any, method: str, cached: bool, storage: str, steps: int, batch_size: int, cross: bool = False
):
    from dskd_core.spec import JobSpec

    student = world.cross_student if method in CROSS or cross else world.student
    teacher = None if method == "sft" else {"name_or_path": str(world.teacher)}
    prompt_template = world.manifest.get("prompt_template")
    data = {"path": str(world.train), "dev_path": str(world.dev)}
    if prompt_template:
        data["prompt_template"] = prompt_template
    return JobSpec.model_validate(
        {
            "student": {"name_or_path": str(student)},
            "teacher": teacher,
            "data": data,
            "distill": {"method": method, "divergence": "fkl", "kd_rate": 0.5, "temperature": 1.0},
            "training": {
                "max_steps": steps,
                "batch_size": batch_size,
                "lr": 1e-3,
                "max_prompt_length": 64,
                "max_length": 128,
                "seed": 0,
                "eval_interval": None,
                "checkpoint_interval": None,
                "teacher_cache": storage if cached else "off",
            },
        }
    )


def build(setting: Setting, spec: Any, accelerator: Any, run_dir: Path, cache: Any) -> None:
    """Set the run up (and open the teacher cache for a cached setting, building what it misses)."""
    from dskd_core.cache.fill import open_teacher_cache
    from dskd_core.progress import NeverCancel
    from dskd_core.training.setup import start_run
    from dskd_core.training.step import batch_stream, planned_examples

    started = time.perf_counter()
    run = start_run(spec, run_dir, accelerator)
    if setting.cached:
        log = EventLog()
        cached = open_teacher_cache(
            spec,
            run.setup,
            accelerator,
            cache,
            sink=log,
            cancel=NeverCancel(),
            train_indices=planned_examples(run),
        )
        run.setup.teacher_cache = cached
        setting.cache_status = cached.status
        for event in log.events:
            if event.metrics and "cache_bytes_per_token" in event.metrics:
                setting.cache_metrics = dict(event.metrics)
        setting.cache_metrics["hidden_size"] = float(cached.hidden_size)
    t = spec.training
    setting.run = run
    setting.batches = batch_stream(run.setup, t.batch_size, t.seed, 0, 0, accelerator)
    setting.setup_seconds = time.perf_counter() - started


def run_steps(setting: Setting, steps: int) -> tuple[float, float, float]:
    """`steps` optimizer steps: (wall seconds, CPU seconds, student tokens)."""
    from dskd_core.training.step import optimizer_step

    run, accum = setting.run, setting.run.spec.training.grad_accum
    tokens = 0.0
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        _, n = optimizer_step(run, [next(setting.batches) for _ in range(accum)])
        tokens += n
    return time.perf_counter() - wall, time.process_time() - cpu, tokens


def ratios(setting: Setting, sft: Setting, kind: str) -> float:
    mine, base = getattr(setting, kind), getattr(sft, kind)
    return statistics.median(a / b for a, b in zip(mine, base, strict=True))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round of 1 step, batch 4")
    ap.add_argument("--world", choices=["fast", "full"], default="fast", help="toy world size")
    ap.add_argument("--world-dir", type=Path, help="toy world directory (built there if missing)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps per setting per round")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--storage", choices=["fp32", "bf16"], default="fp32", help="the cache's storage dtype")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--cache-dir", type=Path, help="teacher cache root (default: a temporary directory)")
    ap.add_argument("--log", type=Path, default=ROOT / "bench" / "out" / "throughput.jsonl")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.batch_size = 1, 1, 4

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return measure(args)
    finally:
        torch.set_num_threads(threads)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per model and setting
    from accelerate.utils import set_seed

    from dskd_core.cache import TeacherCache
    from dskd_core.toy import build_toy_world
    from dskd_core.training.setup import make_accelerator

    world_dir = args.world_dir or (
        ROOT / ".pytest_cache" / "d" / "toy_world" if args.world == "fast" else ROOT / "toy_world"
    )
    world = build_toy_world(world_dir, size=args.world, seed=0, progress=print)
    accelerator = make_accelerator("fp32", "cpu" if not torch.cuda.is_available() else None)
    total_steps = 1 + args.rounds * args.steps
    settings = [Setting("sft", "sft", False)]
    if any(m in CROSS for m in args.methods):  # the cross-vocabulary student's own baseline
        settings.append(Setting("sft cross", "sft", False, cross=True))
    for method in args.methods:
        settings += [Setting(f"{method} live", method, False), Setting(f"{method} cache", method, True)]

    with tempfile.TemporaryDirectory(prefix="dskd-throughput-") as tmp:
        cache = TeacherCache(args.cache_dir or Path(tmp) / "cache")
        for i, s in enumerate(settings):
            set_seed(0)
            spec = make_spec(
                world,
                s.method,
                s.cached,
                args.storage,
                total_steps,
                args.batch_size,
                s.cross or s.method in CROSS,
            )
            build(s, spec, accelerator, Path(tmp) / f"run{i}", cache)
            run_steps(s, 1)  # warm-up: first-call allocations and lazy initialisation, not timed
        for r in range(args.rounds):
            order = settings[r % len(settings) :] + settings[: r % len(settings)]
            for s in order:
                wall, cpu, tokens = run_steps(s, args.steps)
                s.wall.append(wall / args.steps)
                s.cpu.append(cpu / args.steps)
                s.tokens.append(tokens / args.steps)
            print(f"round {r + 1}/{args.rounds} done ({time.strftime('%H:%M:%S')})", flush=True)

    baselines = {s.cross: s for s in settings if s.method == "sft"}
    load = os.getloadavg()
    print()
    print(
        f"toy world {args.world}, batch {args.batch_size}, {args.rounds} rounds × {args.steps} steps per setting, "
        f"{args.threads} torch thread(s), cache storage {args.storage}; load average {load[0]:.2f}"
    )
    header = (
        f"{'setting':<18}{'s/step':>9}{'cpu s/step':>11}{'tok/s':>9}{'wall/sft':>10}{'cpu/sft':>9}"
        f"{'cache':>8}{'setup s':>9}"
    )
    print(header)
    rows = []
    for s in settings:
        sft = baselines[s.cross or s.method in CROSS]
        row = {
            "setting": s.name,
            "method": s.method,
            "cached": s.cached,
            "s_per_step": statistics.median(s.wall),
            "cpu_s_per_step": statistics.median(s.cpu),
            "tokens_per_s": statistics.median(t / w for t, w in zip(s.tokens, s.wall, strict=True)),
            "baseline": sft.name,
            "wall_ratio": ratios(s, sft, "wall"),
            "cpu_ratio": ratios(s, sft, "cpu"),
            "cache": s.cache_status,
            "setup_s": s.setup_seconds,
        }
        rows.append(row)
        print(
            f"{s.name:<18}{row['s_per_step']:>9.3f}{row['cpu_s_per_step']:>11.3f}{row['tokens_per_s']:>9.0f}"
            f"{row['wall_ratio']:>10.2f}{row['cpu_ratio']:>9.2f}{s.cache_status:>8}{s.setup_seconds:>9.1f}"
        )
    print(
        "(ratios to the SFT run of the same student: dskd_eta's is the cross-vocabulary student, `sft cross`)"
    )
    print()
    cached = [s for s in settings if s.cached]
    for s in cached:
        m = s.cache_metrics
        payload = m["hidden_size"] * (4 if args.storage == "fp32" else 2)
        print(
            f"cache for {s.method}: {s.cache_status}, {m['cache_bytes'] / 1e6:.1f} MB on disk, "
            f"{m['cache_bytes_per_token']:.0f} bytes per teacher token (payload {payload:.0f}: hidden size "
            f"{m['hidden_size']:.0f} × {args.storage})"
        )
    verdicts = []
    for s, row in zip(settings, rows, strict=True):
        if s.cached:
            ok = row["cpu_ratio"] <= TARGET
            verdicts.append(ok)
            print(
                f"target {s.method} with a warm cache ≤ {TARGET}× SFT: cpu {row['cpu_ratio']:.2f}×, "
                f"wall {row['wall_ratio']:.2f}× -> {'met' if ok else 'MISSED'} (on CPU time)"
            )
    summary = {
        "bench": "throughput",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "load_average": load,
        "rows": rows,
        "cache": {s.method: s.cache_metrics for s in cached},
    }
    args.log.parent.mkdir(parents=True, exist_ok=True)
    with args.log.open("a") as f:
        f.write(json.dumps(summary) + "\n")
    return summary


if __name__ == "__main__":
    main()
