"""Quality benchmark at convergence: every method on the toy world, same teacher, same students, same epochs.

    .venv/bin/python bench/quality.py --world DIR --size fast   # main rows + SFT at equal wall time, 3 seeds
    .venv/bin/python bench/quality.py --world DIR --size fast --ablation   # the ablation rows
    .venv/bin/python bench/quality.py --quick         # smoke run on the fast toy world (< 1 min once it is built)
    .venv/bin/python bench/quality.py --rows sft,dskd_v2_ideal --seeds 1   # a subset

Protocol (the published one). Each configuration (a row of ROWS: name, method, student, spec overrides) is
trained with `run_job` from the world's student for the same number of epochs over the student's training
records, once per training seed. At the end of every epoch the engine scores dev Rouge-L by greedy decoding
(`evaluation.interval: epoch`) and keeps the best checkpoint (`evaluation.select_best`); the export carries the
best dev checkpoint's weights, and the bench scores that export on the held-out test split (items never seen in
training). Rouge-L F1 ×100 is the best over each record's references (`dskd_core.evaluate`); scores are mean ±
population std (ddof=0) over the training seeds. The teacher and the untrained students are scored the same way
(one greedy pass, no seeds). KD methods read the teacher from the teacher cache (`training.teacher_cache`),
filled once per world before the runs and timed apart, so the teacher runs once, not once per epoch.

Wall time per run: `train_s` is `run_job` end to end (set-up, data, the steps, export) minus the per-epoch dev
generation; the one-off costs a KD run would pay alone (filling the teacher cache; SeqKD's teacher generation)
are kept apart and added back for the equal-wall-time rows.

Rows resolved after the main ones (dev picks, test reports): on-policy rows repeat the best off-policy KD row of
their student (by mean best-dev Rouge-L) with the on-policy overrides; wall-time rows train SFT for as many
epochs as fit into the wall time of a KD row (the student's best KD row, or its best DSKD row).

A row whose method or settings are not available in this checkout (unknown spec field, unregistered distiller)
is recorded as "not run: <reason>"; any other failure is recorded as "failed: <error>"; the bench goes on.
Outputs in --out: runs.jsonl (one line per run; finished runs are reused by a rerun with the same settings, the
others are tried again), results.json, results.md and quality.png (--ablation: ablation.json/.md/.png).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.quality_config import (
    ABLATION_ROWS,
    FULL_BUDGET,
    MAIN_ROWS,
    QUICK_BUDGET,
    QUICK_ROWS,
    ROWS,
    WALLTIME_ROWS,
    Budget,
    Row,
)
from bench.quality_report import write_markdown, write_plot

__all__ = [
    "ABLATION_ROWS",
    "FULL_BUDGET",
    "MAIN_ROWS",
    "QUICK_BUDGET",
    "QUICK_ROWS",
    "ROWS",
    "WALLTIME_ROWS",
    "Budget",
    "Row",
    "main",
    "run_bench",
]


class NotAvailable(Exception):
    """The configuration cannot run in this checkout (method or setting missing): the row says why."""


# ---------------------------------------------------------------------------------------------------- one run


def job_spec(world, row: Row, budget: Budget, seed: int):
    """The JobSpec of `row` at `seed`; raises NotAvailable when the spec rejects the row's settings."""
    from pydantic import ValidationError

    from dskd_core.spec import JobSpec

    raw: dict[str, Any] = {
        "name": f"quality-{row.name}-seed{seed}",
        "teacher": {"name_or_path": str(world.teacher)},
        "student": {"name_or_path": str(getattr(world, row.student))},
        "data": {
            "path": str(world.train),
            "dev_path": str(world.dev),
            "dev_max_examples": budget.eval_dev,  # the generation's dev records (and dev CE's)
            "max_examples": budget.train_examples,
            "prompt_template": prompt_template(world),
        },
        "distill": {"method": row.method, "kd_rate": budget.kd_rate, "temperature": budget.temperature},
        # Dev Rouge-L at the end of every epoch, the best checkpoint exported (also seqkd's generation batch).
        "evaluation": {
            **eval_fields(budget),
            "max_examples": budget.eval_dev,
            "interval": "epoch",
            "select_best": True,
        },
        "training": {
            "epochs": max(1, round(budget.epochs * row.epoch_scale)),
            "batch_size": budget.batch_size,
            "lr": budget.lr,
            "warmup_ratio": budget.warmup_ratio,
            "max_prompt_length": budget.max_prompt_length,
            "max_length": budget.max_length,
            "seed": seed,
            "log_interval": 1,  # a step event per step: the bench times the dev generation between events
            "checkpoint_minutes": None,  # checkpoints: only the best dev epoch's (and the last)
            "keep_checkpoints": 1,
        },
    }
    for key, value in row.overrides.items():
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise NotAvailable(f"spec rejects the settings ({problems})") from None


def prompt_template(world) -> str:
    from dskd_core.toy.training import PROMPT_TEMPLATE

    return world.manifest.get("prompt_template", PROMPT_TEMPLATE)


def eval_fields(budget: Budget) -> dict[str, Any]:
    # Greedy: one deterministic pass per model, so the spread in the table is the training seeds' alone.
    return {
        "do_sample": False,
        "seeds": [0],
        "max_new_tokens": budget.max_new_tokens,
        "max_prompt_tokens": budget.max_prompt_length,
        "no_repeat_ngram_size": 6,
        "batch_size": 64,
    }


def evaluate_dir(model_dir: Path, world, budget: Budget, splits=("dev", "test")) -> dict[str, float]:
    """Greedy Rouge-L and exact match of a saved model on the dev and/or test subsets, and the time it took."""
    from dskd_core.data import load_records
    from dskd_core.evaluate import evaluate_model, load_eval_model, records_for_eval
    from dskd_core.spec import EvalSpec

    started = time.perf_counter()
    model, tokenizer = load_eval_model(str(model_dir), device="cpu")
    sizes = {"dev": (world.dev, budget.eval_dev), "test": (world.test, budget.eval_test)}
    scores: dict[str, float] = {}
    for split in splits:
        path, n = sizes[split]
        records = records_for_eval(load_records(path)[:n], prompt_template(world), tokenizer)
        result = evaluate_model(model, tokenizer, records, settings=EvalSpec(**eval_fields(budget)))
        scores[f"{split}_rougeL"] = result.rougeL.mean
        scores[f"{split}_em"] = result.exact_match.mean
    scores["eval_s"] = time.perf_counter() - started
    return scores


class TimedSink:
    """Keeps every progress event with the time it arrived (the bench reads the per-epoch dev scores from it)."""

    def __init__(self, cancel_after_cache: bool = False) -> None:
        self.events: list[tuple[float, Any]] = []
        self.cache_ready = False
        self.cancel_after_cache = cancel_after_cache

    def emit(self, event) -> None:
        self.events.append((time.perf_counter(), event))
        if event.type == "log" and "cache_examples" in event.metrics:
            self.cache_ready = True

    def cancelled(self) -> bool:  # the CancelToken of the cache fill: stop once the cache is filled
        return self.cancel_after_cache and self.cache_ready


def epoch_curve(events: list[tuple[float, Any]], started: float) -> tuple[list[dict[str, float]], float]:
    """Per dev generation (one per epoch): epoch, step, dev Rouge-L and the training seconds up to it (without
    the dev generations); and the total seconds spent generating on dev."""
    curve, generation_s, previous = [], 0.0, started
    for t, e in events:
        if e.type == "eval" and "dev_rougeL" in e.metrics:
            generation_s += t - previous
            curve.append(
                {
                    "epoch": round(e.epoch, 3),
                    "step": e.step,
                    "dev_rougeL": e.metrics["dev_rougeL"],
                    "dev_em": e.metrics.get("dev_exact_match"),
                    "train_s": t - started - generation_s,
                }
            )
        previous = t
    return curve, generation_s


def step_means(events: list[tuple[float, Any]]) -> dict[str, float]:
    """Means over the training steps of the distillers' alignment figures (share of aligned positions, ...)."""
    sums: dict[str, list[float]] = {}
    for _, e in events:
        if e.type == "step":
            for name, value in e.metrics.items():
                if name.endswith("_ratio") or name.endswith("agreement"):
                    sums.setdefault(name, []).append(float(value))
    return {name: sum(v) / len(v) for name, v in sums.items()}


def run_one(world, row: Row, budget: Budget, seed: int, runs_dir: Path, cache_dir: Path) -> dict[str, Any]:
    """Train and evaluate one (row, seed); never raises: failures become the record's status."""
    from dskd_core.cache import open_cache_dir
    from dskd_core.errors import PreflightError
    from dskd_core.train import run_job

    record: dict[str, Any] = {"row": row.name, "method": row.method, "student": row.student, "seed": seed}
    record["overrides"] = row.overrides
    run_dir = runs_dir / f"{row.name}-seed{seed}"
    if row.method == "seqkd" and "distill.seqkd_data_path" not in row.overrides:
        # Greedy teacher outputs do not depend on the student's seed: generated once, reused by the other seeds.
        digest = hashlib.sha256(fingerprint(world, budget).encode()).hexdigest()[:12]
        cache = runs_dir / f"seqkd-teacher-{digest}.jsonl"
        record["seqkd_generated"] = not cache.exists()
        row = replace(row, overrides={**row.overrides, "distill.seqkd_data_path": str(cache)})
    try:
        spec = job_spec(world, row, budget, seed)
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: run_job would resume from old checkpoints
        sink = TimedSink()
        started = time.perf_counter()
        try:
            result = run_job(spec, run_dir, device="cpu", sink=sink, teacher_cache=open_cache_dir(cache_dir))
        except PreflightError as e:
            if "not available in this build" in str(e):
                raise NotAvailable(str(e)) from None
            raise
        total = time.perf_counter() - started
        curve, generation_s = epoch_curve(sink.events, started)
        record["epochs"] = spec.training.epochs
        record["steps"] = result.steps
        record["train_s"] = total - generation_s
        record["dev_generation_s"] = generation_s
        record["curve"] = curve
        record["best_step"] = int(result.metrics["exported_step"])
        record["best_epoch"] = next(c["epoch"] for c in curve if c["step"] == record["best_step"])
        record["dev_rougeL"] = result.metrics["dev_rougeL"]  # the best epoch's (the exported weights')
        record["dev_em"] = result.metrics["dev_exact_match"]
        record["alignment"] = step_means(sink.events)
        record |= evaluate_dir(Path(result.export_dir), world, budget, splits=("test",))
        record["status"] = "ok"
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the export is kept; disk stays small
    except NotAvailable as e:
        record["status"] = f"not run: {e}"
    except Exception as e:  # one broken configuration must not end the benchmark
        record["status"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return record


def fill_teacher_cache(
    world, student: str, budget: Budget, runs_dir: Path, cache_dir: Path
) -> dict[str, Any]:
    """Fill the teacher cache with the training and dev examples of `student`'s KD jobs, timed: the one-off
    cost a KD run alone would pay (the job is stopped once its cache is ready, before its first step)."""
    from dskd_core.cache import open_cache_dir
    from dskd_core.train import run_job

    method = "vanilla_kd" if student == "student" else "dskd_eta"
    spec = job_spec(world, Row(f"cache-fill-{student}", method, student), budget, 0)
    run_dir = runs_dir / f"cache-fill-{student}"
    shutil.rmtree(run_dir, ignore_errors=True)
    token = TimedSink(cancel_after_cache=True)
    run_job(spec, run_dir, device="cpu", sink=token, cancel=token, teacher_cache=open_cache_dir(cache_dir))
    shutil.rmtree(run_dir, ignore_errors=True)
    # From the run's start (set-up done: models loaded, data tokenised) to the cache being ready.
    begin = next(t for t, e in token.events if e.type == "started")
    end, log = next((t, e) for t, e in token.events if e.type == "log" and "cache_examples" in e.metrics)
    return {
        "cache_fill_s": end - begin,
        "cache_examples": log.metrics["cache_examples"],
        "cache_computed": log.metrics["cache_computed"],
    }


# ----------------------------------------------------------------------------------------------- the bench


def _run_many(world, tasks: list[tuple[Row, int]], budget: Budget, out: Path, log) -> None:
    """Run (row, seed) pairs one after another, or `budget.jobs` at a time in spawned processes."""
    runs_dir, cache_dir = out / "runs", out / "teacher-cache"
    if budget.jobs <= 1:
        for row, seed in tasks:
            log(run_one(world, row, budget, seed, runs_dir, cache_dir))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")  # no forked torch thread pools
    with ProcessPoolExecutor(
        budget.jobs, mp_context=context, initializer=_init_worker, initargs=(budget.threads,)
    ) as pool:
        futures = [pool.submit(run_one, world, row, budget, seed, runs_dir, cache_dir) for row, seed in tasks]
        for future in futures:
            log(future.result())


def _init_worker(threads: int) -> None:
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per weight load would bury the per-run lines in the log
    torch.set_num_threads(threads)
    _warm_up()


def _warm_up() -> None:
    """Import what the first run would otherwise import inside its timed section."""
    import accelerate  # noqa: F401
    from transformers import GPT2LMHeadModel, LlamaForCausalLM  # noqa: F401

    from dskd_core.data.build import build_datasets  # noqa: F401
    from dskd_core.train import import_distillers

    import_distillers()


def fingerprint(world, budget: Budget) -> str:
    """Identifies the settings a cached run was made with (a changed budget or world reruns everything)."""
    meta = {k: world.manifest.get(k) for k in ("version", "size", "seed", "build_seconds")}
    return json.dumps(
        {
            "world": meta,
            "budget": {k: v for k, v in asdict(budget).items() if k not in {"seeds", "jobs", "threads"}},
        }
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _ok(records: list[dict[str, Any]], row: Row) -> list[dict[str, Any]]:
    """The finished runs of `row` with its current settings."""
    settings = _settings(asdict(row))
    return [
        x for x in records if x["row"] == row.name and x.get("status") == "ok" and _settings(x) == settings
    ]


def best_row(candidates: list[Row], records: list[dict[str, Any]]) -> Row | None:
    """The candidate with the best mean (best-epoch) dev Rouge-L over its finished seeds."""
    best, best_score = None, float("-inf")
    for r in candidates:
        scores = [x["dev_rougeL"] for x in _ok(records, r)]
        if scores and _mean(scores) > best_score:
            best, best_score = r, _mean(scores)
    return best


def off_policy_kd_rows(rows: list[Row], student: str) -> list[Row]:
    return [
        r
        for r in rows
        if r.student == student
        and r.method not in {"", "sft"}
        and r.on_policy_of is None
        and r.walltime_of is None
    ]


def resolve_on_policy(row: Row, rows: list[Row], records: list[dict[str, Any]]) -> Row | str:
    """The on-policy version of the best off-policy KD row of `row.on_policy_of` by mean dev Rouge-L (among the
    methods on-policy KD supports: uld and mined have no position-wise KD term to move onto student samples)."""
    from dskd_core.spec import ON_POLICY_METHODS

    candidates = [r for r in off_policy_kd_rows(rows, row.on_policy_of) if r.method in ON_POLICY_METHODS]
    best = best_row(candidates, records)
    if best is None:
        return f"no off-policy KD row of {row.on_policy_of} finished"
    overrides = {**best.overrides, **row.overrides}
    return replace(
        row, method=best.method, overrides=overrides, on_policy_of=None, info={"source_row": best.name}
    )


def wall_time(row: Row, records: list[dict[str, Any]], fills: dict[str, float]) -> float:
    """A KD row's wall time per run as a user running it alone would pay it: the mean training time plus the
    one-off teacher cost (the cache fill for the student; SeqKD's teacher generation, which one seed paid)."""
    ok = _ok(records, row)
    seconds = _mean([x["train_s"] for x in ok])
    if ok[0]["method"] == "seqkd":
        paid, reused = (
            [x["train_s"] for x in ok if x.get("seqkd_generated")],
            [x["train_s"] for x in ok if not x.get("seqkd_generated")],
        )
        if paid and reused:
            return _mean(reused) + (_mean(paid) - _mean(reused))
        return seconds
    if ok[0]["method"] == "sft":
        return seconds
    return seconds + fills.get(ok[0]["student"], 0.0)


def resolve_walltime(
    row: Row, rows: list[Row], records: list[dict[str, Any]], budget: Budget, fills: dict[str, float]
) -> Row | str:
    """SFT of `row.walltime_of` for as many whole epochs as fit into the wall time of the picked KD row."""
    student = row.walltime_of
    candidates = off_policy_kd_rows(rows, student)
    if row.walltime_pick == "best_dskd":
        candidates = [r for r in candidates if r.method.startswith("dskd")]
    target = best_row(candidates, records)
    sft = next((r for r in rows if r.method == "sft" and r.student == student and not r.walltime_of), None)
    if target is None or sft is None or not _ok(records, sft):
        return f"needs finished SFT and {row.walltime_pick} rows of {student}"
    kd_s, sft_s = wall_time(target, records, fills), wall_time(sft, records, fills)
    epochs = max(1, int(budget.epochs * kd_s / sft_s))
    info = {"source_row": target.name, "source_wall_s": kd_s, "sft_wall_s": sft_s}
    return replace(row, overrides={**row.overrides, "training.epochs": epochs}, walltime_of=None, info=info)


def run_bench(
    world,
    rows: list[Row],
    budget: Budget,
    out: Path,
    *,
    say: Callable[[str], None] = print,
    references: bool = True,
    execute: bool = True,
) -> dict[str, Any]:
    """Run every (row, seed) not already in out/runs.jsonl with these settings; return the summary.

    Rows resolved from others (on-policy, wall-time) look at the finished runs of `rows`. With `execute` off
    nothing is trained: the summary of the runs recorded so far (rows without runs say "not run")."""
    import torch

    from dskd_core.evaluate import mean_std

    _init_worker(budget.threads)
    out.mkdir(parents=True, exist_ok=True)
    log_path, key = out / "runs.jsonl", fingerprint(world, budget)
    # Runs that did not finish (not available then, or failed) are tried again.
    records = [
        r
        for r in _read_jsonl(log_path)
        if r.get("fingerprint") == key and (r.get("reference") or r.get("status") == "ok")
    ]
    started, load_before = time.perf_counter(), _load()
    refs = _reference_scores(world, budget, out, records, say, execute) if references else {}

    def log(record: dict[str, Any]) -> None:
        record["fingerprint"] = key
        records.append(record)
        with log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        say(_describe(record))

    def pending(candidates: list[Row]) -> list[tuple[Row, int]]:
        # Seed-major: an interrupted bench still has every row at the first seeds. A run counts as done only
        # with the row's current settings (a resolved row may pick differently after more runs finished).
        done = {(r["row"], r["seed"], _settings(r)) for r in records if not r.get("reference")}
        return [
            (row, seed)
            for seed in budget.seeds
            for row in candidates
            if (row.name, seed, _settings(asdict(row))) not in done
        ]

    plain = [r for r in rows if r.on_policy_of is None and r.walltime_of is None]
    fills = _cache_fills(world, budget, out, records, plain, say, execute)
    if execute:
        _run_many(world, pending(plain), budget, out, log)

    resolved: dict[str, Row] = {r.name: r for r in plain}
    for stage in ("on_policy", "walltime"):
        batch = []
        for row in rows:
            if (stage == "on_policy" and row.on_policy_of is None) or (
                stage == "walltime" and row.walltime_of is None
            ):
                continue
            actual = (
                resolve_on_policy(row, rows, records)
                if stage == "on_policy"
                else resolve_walltime(row, rows, records, budget, fills)
            )
            if isinstance(actual, str):
                for _, seed in pending([row]):
                    say(f"{row.name:>28} seed {seed}: not run: {actual}")
                resolved[row.name] = row
            else:
                batch.append(actual)
                resolved[row.name] = actual
        if execute:
            _run_many(world, pending(batch), budget, out, log)

    table = []
    for row in rows:
        actual = resolved[row.name]
        wanted = _settings(asdict(actual))
        runs = [
            r
            for r in records
            if r["row"] == row.name and r.get("seed") in budget.seeds and _settings(r) == wanted
        ]
        ok = [r for r in runs if r["status"] == "ok"]
        entry: dict[str, Any] = {
            "name": row.name,
            "method": actual.method or "-",
            "student": row.student,
            "overrides": actual.overrides,
            "info": actual.info,
            "seeds": len(ok),
            "status": "ok" if ok else (runs[0]["status"] if runs else "not run"),
        }
        if ok:
            for metric in ("dev_rougeL", "test_rougeL", "dev_em", "test_em", "best_epoch"):
                entry[metric] = mean_std([r[metric] for r in ok]).model_dump()
            for metric in ("train_s", "eval_s", "dev_generation_s"):
                entry[metric] = _mean([r[metric] for r in ok])
            entry["epochs"] = ok[0]["epochs"]
            entry["wall_s"] = wall_time(actual, records, fills)
            entry["curve"] = _mean_curve([r["curve"] for r in ok])
            alignment = [r.get("alignment") or {} for r in ok]
            entry["alignment"] = {k: _mean([a[k] for a in alignment if k in a]) for k in alignment[0]}
            if len(ok) < len(runs):
                entry["status"] = (
                    f"ok ({len(runs) - len(ok)} failed: {next(r['status'] for r in runs if r not in ok)})"
                )
        table.append(entry)
    return {
        "budget": asdict(budget),
        "world": {k: world.manifest.get(k) for k in ("version", "size", "seed", "models", "splits")},
        "world_path": str(world.root),
        "eval_records": _eval_counts(world, budget),
        "references": refs,
        "cache_fill_s": fills,
        "rows": table,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "torch_threads": budget.threads,
            "jobs": budget.jobs,
            "load_average_before": load_before,
            "load_average_after": _load(),
        },
        "bench_seconds": time.perf_counter() - started,
    }


def _eval_counts(world, budget: Budget) -> dict[str, int]:
    from dskd_core.data import load_records

    return {
        "dev": len(load_records(world.dev)[: budget.eval_dev]),
        "test": len(load_records(world.test)[: budget.eval_test]),
    }


def _settings(run: dict[str, Any]) -> str:
    """What makes two runs of one row the same training: the method and the spec overrides."""
    return json.dumps([run.get("method") or "", run.get("overrides") or {}], sort_keys=True)


def _mean_curve(curves: list[list[dict[str, float]]]) -> list[dict[str, Any]]:
    """Per epoch over the seeds: dev Rouge-L mean ± std and the mean training seconds up to that epoch."""
    from dskd_core.evaluate import mean_std

    n = min(len(c) for c in curves)
    return [
        {
            "epoch": curves[0][i]["epoch"],
            "dev_rougeL": mean_std([c[i]["dev_rougeL"] for c in curves]).model_dump(),
            "train_s": _mean([c[i]["train_s"] for c in curves]),
        }
        for i in range(n)
    ]


def _cache_fills(
    world, budget: Budget, out: Path, records: list, rows: list[Row], say, execute: bool = True
) -> dict[str, float]:
    """The timed teacher-cache fill of each student that has KD rows (cached in runs.jsonl like the runs)."""
    fills = {}
    for student in ("student", "cross_student"):
        if not any(r.student == student and r.method not in {"sft", "seqkd", ""} for r in rows):
            continue
        name = f"teacher_cache_fill:{student}"
        found = next((r for r in records if r.get("row") == name), None)
        if found is None and not execute:
            continue
        if found is None:
            found = {"row": name, "reference": True, "fingerprint": fingerprint(world, budget)}
            found |= fill_teacher_cache(world, student, budget, out / "runs", out / "teacher-cache")
            records.append(found)
            with (out / "runs.jsonl").open("a") as f:
                f.write(json.dumps(found) + "\n")
            say(
                f"{name:>28}: {found['cache_fill_s']:.1f} s "
                f"({found['cache_computed']:.0f} of {found['cache_examples']:.0f} examples computed)"
            )
        fills[student] = found["cache_fill_s"]
    # The first student's fill computed the teacher on every example; a second one only finds them there (the
    # teacher's outputs do not depend on the student), so each student is charged the full computation.
    if fills:
        full = max(fills.values())
        fills = dict.fromkeys(fills, full)
    return fills


def _reference_scores(
    world, budget: Budget, out: Path, records: list, say, execute: bool = True
) -> dict[str, Any]:
    """Teacher and untrained students on the same subsets (cached in runs.jsonl like the runs)."""
    found = {r["row"]: r for r in records if r.get("reference")}
    refs = {}
    for name in ("teacher", "student", "cross_student"):
        if name not in found and not execute:
            continue
        if name not in found:
            record = {"row": name, "reference": True, "fingerprint": fingerprint(world, budget)}
            record |= evaluate_dir(getattr(world, name), world, budget)
            records.append(record)
            with (out / "runs.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
            say(f"{name:>28}: dev {record['dev_rougeL']:.1f}  test {record['test_rougeL']:.1f} (reference)")
            found[name] = record
        refs[name] = {k: v for k, v in found[name].items() if k not in {"row", "reference", "fingerprint"}}
    return refs


def _describe(record: dict[str, Any]) -> str:
    head = f"{record['row']:>28} seed {record['seed']}: "
    if record["status"] != "ok":
        return head + record["status"]
    return head + (
        f"best dev {record['dev_rougeL']:.1f} (epoch {record['best_epoch']:.0f}/{record['epochs']:.0f})  "
        f"test {record['test_rougeL']:.1f}  train {record['train_s']:.0f} s  "
        f"dev gen {record['dev_generation_s']:.0f} s  test eval {record['eval_s']:.0f} s"
    )


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# --------------------------------------------------------------------------------------------------- the CLI


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: fast toy world, 1 seed, 2 epochs")
    parser.add_argument("--world", type=Path, help="toy world directory (built there if missing)")
    parser.add_argument("--size", choices=("fast", "full"), help="toy world size (default full, quick fast)")
    parser.add_argument("--out", type=Path, help="output directory (default bench/out/quality[-quick])")
    parser.add_argument("--ablation", action="store_true", help="the ablation rows (τ, τ², kd_rate, ...)")
    parser.add_argument("--rows", help="comma-separated row names to run (default: all)")
    parser.add_argument("--seeds", type=int, help="number of training seeds (default 3, quick 1)")
    parser.add_argument("--epochs", type=int, help="epochs per run (overrides the budget)")
    parser.add_argument(
        "--train-examples", type=int, help="training records the student sees (overrides the budget)"
    )
    parser.add_argument("--threads", type=int, help="torch threads per run")
    parser.add_argument(
        "--world-threads",
        type=int,
        help="torch threads of the toy world's build (default: the size's setting)",
    )
    parser.add_argument("--jobs", type=int, help="runs at a time, each in its own process")
    parser.add_argument("--fresh", action="store_true", help="ignore runs recorded in out/runs.jsonl")
    parser.add_argument(
        "--report-only", action="store_true", help="train nothing: the tables of the runs recorded so far"
    )
    args = parser.parse_args(argv)

    from dskd_core.toy import build_toy_world

    bench_dir = Path(__file__).resolve().parent
    budget, rows = (QUICK_BUDGET, QUICK_ROWS) if args.quick else (FULL_BUDGET, ROWS)
    if args.ablation:
        rows = ABLATION_ROWS
    if args.seeds:
        budget = replace(budget, seeds=tuple(range(args.seeds)))
    if args.epochs:
        budget = replace(budget, epochs=args.epochs)
    if args.train_examples:
        budget = replace(budget, train_examples=args.train_examples)
    if args.threads:
        budget = replace(budget, threads=args.threads)
    if args.jobs:
        budget = replace(budget, jobs=args.jobs)
    if args.rows:
        wanted = args.rows.split(",")
        known = {r.name: r for r in QUICK_ROWS + ABLATION_ROWS + ROWS}
        unknown = sorted(set(wanted) - set(known))
        if unknown:
            parser.error(f"unknown rows {unknown}; rows: {', '.join(known)}")
        # Resolved rows pick among the main rows: keep those they read in the summary's context.
        rows = [known[name] for name in wanted]
        if any(r.on_policy_of or r.walltime_of for r in rows):
            rows = [r for r in ROWS if r.name not in wanted and not (r.on_policy_of or r.walltime_of)] + rows
    size = args.size or ("fast" if args.quick else "full")
    world_dir = args.world or (
        bench_dir / "out" / "toy_world_fast" if size == "fast" else bench_dir.parent / "toy_world"
    )
    # The ablation shares the main run's directory: its unchanged rows are reused from there.
    out = args.out or bench_dir / "out" / ("quality-quick" if args.quick else "quality")
    stem, plot = ("ablation", "ablation.png") if args.ablation else ("results", "quality.png")
    if args.fresh and (out / "runs.jsonl").exists():
        (out / "runs.jsonl").unlink()
    world = build_toy_world(world_dir, size=size, seed=0, progress=print, threads=args.world_threads)
    summary = run_bench(world, rows, budget, out, execute=not args.report_only)
    summary["command"] = "bench/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (out / f"{stem}.json").write_text(json.dumps(summary, indent=2))
    write_markdown(summary, out / f"{stem}.md")
    write_plot(summary, out / plot)
    print(f"wrote {out / f'{stem}.md'}, {out / plot} ({summary['bench_seconds']:.0f} s)")
    return summary


if __name__ == "__main__":
    main()
