"""Quality benchmark: every method on the toy world, same teacher, same student budget, 3 training seeds.

    .venv/bin/python bench/quality.py                 # full run (~1 h on 2 CPU cores), toy world in ./toy_world
    .venv/bin/python bench/quality.py --quick         # smoke run on the fast toy world (< 1 min once it is built)
    .venv/bin/python bench/quality.py --rows sft,dskd_fkl --seeds 1   # a subset

Protocol. Each configuration (a row of ROWS: name, method, student, spec overrides) is trained with `run_job`
from the same untrained student for the same number of optimizer steps on the same data, once per training
seed; the exported student is evaluated by greedy decoding (one deterministic pass) on the first records of the
dev split and of the held-out test split (items never seen in training), Rouge-L F1 ×100 with the best over each
record's references (`dskd_core.evaluate`). Scores are mean ± population std (ddof=0) over the training seeds.
The teacher and the untrained students are evaluated the same way (one pass, no seeds). Wall time is measured
per run: training (`run_job`: set-up, data, steps, export) and evaluation (generation and scoring) separately.

On-policy rows are resolved after the off-policy ones: the off-policy KD row (of a method on-policy KD supports)
with the best mean dev Rouge-L for that student is repeated with the on-policy overrides. Dev picks, test reports.

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
    QUICK_BUDGET,
    QUICK_ROWS,
    ROWS,
    Budget,
    Row,
)
from bench.quality_report import write_markdown, write_plot

__all__ = [
    "ABLATION_ROWS",
    "FULL_BUDGET",
    "QUICK_BUDGET",
    "QUICK_ROWS",
    "ROWS",
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
            "dev_max_examples": budget.dev_ce_examples,
            "max_examples": budget.train_examples,
            "prompt_template": prompt_template(world),
        },
        "distill": {"method": row.method, "kd_rate": budget.kd_rate, "temperature": budget.temperature},
        "evaluation": {"batch_size": 64},  # seqkd's teacher generation batch
        "training": {
            "max_steps": budget.steps,
            "batch_size": budget.batch_size,
            "lr": budget.lr,
            "warmup_ratio": budget.warmup_ratio,
            "max_prompt_length": budget.max_prompt_length,
            "max_length": budget.max_length,
            "seed": seed,
            "log_interval": budget.steps,
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


def eval_settings(budget: Budget):
    from dskd_core.spec import EvalSpec

    # Greedy: one deterministic pass per model, so the spread in the table is the training seeds' alone.
    return EvalSpec(
        do_sample=False,
        seeds=[0],
        max_new_tokens=budget.max_new_tokens,
        max_prompt_tokens=budget.max_prompt_length,
        no_repeat_ngram_size=6,
        batch_size=64,
    )


def evaluate_dir(model_dir: Path, world, budget: Budget) -> dict[str, float]:
    """Greedy Rouge-L and exact match of a saved model on the dev and test subsets, and the time it took."""
    from dskd_core.data import load_records
    from dskd_core.evaluate import evaluate_model, load_eval_model, records_for_eval

    started = time.perf_counter()
    model, tokenizer = load_eval_model(str(model_dir), device="cpu")
    scores: dict[str, float] = {}
    for split, path, n in (("dev", world.dev, budget.eval_dev), ("test", world.test, budget.eval_test)):
        records = records_for_eval(load_records(path)[:n], prompt_template(world), tokenizer)
        result = evaluate_model(model, tokenizer, records, settings=eval_settings(budget))
        scores[f"{split}_rougeL"] = result.rougeL.mean
        scores[f"{split}_em"] = result.exact_match.mean
    scores["eval_s"] = time.perf_counter() - started
    return scores


def run_one(world, row: Row, budget: Budget, seed: int, runs_dir: Path) -> dict[str, Any]:
    """Train and evaluate one (row, seed); never raises: failures become the record's status."""
    from dskd_core.errors import PreflightError
    from dskd_core.train import run_job

    record: dict[str, Any] = {"row": row.name, "method": row.method, "student": row.student, "seed": seed}
    record["overrides"] = row.overrides
    run_dir = runs_dir / f"{row.name}-seed{seed}"
    if row.method == "seqkd" and "distill.seqkd_data_path" not in row.overrides:
        # Greedy teacher outputs do not depend on the student's seed: generated once, reused by the other seeds.
        digest = hashlib.sha256(fingerprint(world, budget).encode()).hexdigest()[:12]
        cache = runs_dir / f"seqkd-teacher-{digest}.jsonl"
        row = replace(row, overrides={**row.overrides, "distill.seqkd_data_path": str(cache)})
    try:
        spec = job_spec(world, row, budget, seed)
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: run_job would resume from old checkpoints
        started = time.perf_counter()
        try:
            result = run_job(spec, run_dir, device="cpu")
        except PreflightError as e:
            if "not available in this build" in str(e):
                raise NotAvailable(str(e)) from None
            raise
        record["train_s"] = time.perf_counter() - started
        record["dev_ce"] = result.metrics.get("dev_ce")
        record |= evaluate_dir(Path(result.export_dir), world, budget)
        record["status"] = "ok"
    except NotAvailable as e:
        record["status"] = f"not run: {e}"
    except Exception as e:  # one broken configuration must not end the benchmark
        record["status"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return record


# ----------------------------------------------------------------------------------------------- the bench


def _run_many(world, tasks: list[tuple[Row, int]], budget: Budget, runs_dir: Path, log) -> None:
    """Run (row, seed) pairs one after another, or `budget.jobs` at a time in spawned processes."""
    if budget.jobs <= 1:
        for row, seed in tasks:
            log(run_one(world, row, budget, seed, runs_dir))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")  # no forked torch thread pools
    with ProcessPoolExecutor(
        budget.jobs, mp_context=context, initializer=_init_worker, initargs=(budget.threads,)
    ) as pool:
        for future in [pool.submit(run_one, world, row, budget, seed, runs_dir) for row, seed in tasks]:
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


def resolve_on_policy(row: Row, rows: list[Row], records: list[dict[str, Any]]) -> Row | str:
    """The on-policy version of the best off-policy KD row of `row.on_policy_of` by mean dev Rouge-L (among the
    methods on-policy KD supports: uld and mined have no position-wise KD term to move onto student samples)."""
    from dskd_core.spec import ON_POLICY_METHODS

    candidates = [r for r in rows if r.student == row.on_policy_of and r.method in ON_POLICY_METHODS]
    best, best_score = None, float("-inf")
    for r in candidates:
        scores = [x["dev_rougeL"] for x in records if x["row"] == r.name and x["status"] == "ok"]
        if scores and sum(scores) / len(scores) > best_score:
            best, best_score = r, sum(scores) / len(scores)
    if best is None:
        return f"no off-policy KD row of {row.on_policy_of} finished"
    return replace(row, method=best.method, overrides={**best.overrides, **row.overrides}, on_policy_of=None)


def run_bench(
    world,
    rows: list[Row],
    budget: Budget,
    out: Path,
    *,
    say: Callable[[str], None] = print,
    references: bool = True,
) -> dict[str, Any]:
    """Run every (row, seed) not already in out/runs.jsonl with these settings; return the summary."""
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
    refs = _reference_scores(world, budget, out, records, say) if references else {}

    def log(record: dict[str, Any]) -> None:
        record["fingerprint"] = key
        records.append(record)
        with log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        say(_describe(record))

    def pending(candidates: list[Row]) -> list[tuple[Row, int]]:
        # Seed-major: an interrupted bench still has every row at the first seeds.
        done = {(r["row"], r["seed"]) for r in records if not r.get("reference")}
        return [(row, seed) for seed in budget.seeds for row in candidates if (row.name, seed) not in done]

    _run_many(world, pending([r for r in rows if r.on_policy_of is None]), budget, out / "runs", log)
    on_policy = []
    for row in rows:
        if row.on_policy_of is None:
            continue
        actual = resolve_on_policy(row, rows, records)
        if isinstance(actual, str):
            for _, seed in pending([row]):
                log(
                    {
                        "row": row.name,
                        "method": "",
                        "student": row.student,
                        "seed": seed,
                        "status": f"not run: {actual}",
                    }
                )
        else:
            on_policy.append(actual)
    _run_many(world, pending(on_policy), budget, out / "runs", log)

    table = []
    for row in rows:
        runs = [r for r in records if r["row"] == row.name and r.get("seed") in budget.seeds]
        ok = [r for r in runs if r["status"] == "ok"]
        entry: dict[str, Any] = {
            "name": row.name,
            "method": (runs[0]["method"] if runs else row.method) or "-",
            "student": row.student,
            "overrides": (runs[0].get("overrides") if runs else None) or row.overrides,
            "seeds": len(ok),
            "status": "ok" if ok else (runs[0]["status"] if runs else "not run: no run recorded"),
        }
        if ok:
            for metric in ("dev_rougeL", "test_rougeL", "dev_em", "test_em"):
                entry[metric] = mean_std([r[metric] for r in ok]).model_dump()
            if all(r.get("dev_ce") is not None for r in ok):
                entry["dev_ce"] = mean_std([r["dev_ce"] for r in ok]).model_dump()
            for metric in ("train_s", "eval_s"):
                entry[metric] = sum(r[metric] for r in ok) / len(ok)
            if len(ok) < len(runs):
                entry["status"] = (
                    f"ok ({len(runs) - len(ok)} failed: {next(r['status'] for r in runs if r not in ok)})"
                )
        table.append(entry)
    return {
        "budget": asdict(budget),
        "world": {k: world.manifest.get(k) for k in ("version", "size", "seed", "models", "splits")},
        "world_path": str(world.root),
        "references": refs,
        "rows": table,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "torch_threads": budget.threads,
            "load_average_before": load_before,
            "load_average_after": _load(),
        },
        "bench_seconds": time.perf_counter() - started,
    }


def _reference_scores(world, budget: Budget, out: Path, records: list, say) -> dict[str, Any]:
    """Teacher and untrained students on the same subsets (cached in runs.jsonl like the runs)."""
    found = {r["row"]: r for r in records if r.get("reference")}
    refs = {}
    for name in ("teacher", "student", "cross_student"):
        if name not in found:
            record = {"row": name, "reference": True, "fingerprint": fingerprint(world, budget)}
            record |= evaluate_dir(getattr(world, name), world, budget)
            with (out / "runs.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
            say(f"{name:>24}: dev {record['dev_rougeL']:.1f}  test {record['test_rougeL']:.1f} (reference)")
            found[name] = record
        refs[name] = {k: v for k, v in found[name].items() if k not in {"row", "reference", "fingerprint"}}
    return refs


def _describe(record: dict[str, Any]) -> str:
    head = f"{record['row']:>24} seed {record['seed']}: "
    if record["status"] != "ok":
        return head + record["status"]
    return head + (
        f"dev {record['dev_rougeL']:.1f}  test {record['test_rougeL']:.1f}  "
        f"train {record['train_s']:.0f} s  eval {record['eval_s']:.0f} s"
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
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: fast toy world, 1 seed, 3 rows, 6 steps"
    )
    parser.add_argument("--world", type=Path, help="toy world directory (built there if missing)")
    parser.add_argument("--out", type=Path, help="output directory (default bench/out/quality[-quick])")
    parser.add_argument(
        "--ablation", action="store_true", help="the ablation rows (temperature, kd_rate, DSKD v1)"
    )
    parser.add_argument("--rows", help="comma-separated row names to run (default: all)")
    parser.add_argument("--seeds", type=int, help="number of training seeds (default 3, quick 1)")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (overrides the budget)")
    parser.add_argument(
        "--train-examples", type=int, help="training records the student sees (overrides the budget)"
    )
    parser.add_argument("--threads", type=int, help="torch threads per run")
    parser.add_argument("--jobs", type=int, help="runs at a time, each in its own process")
    parser.add_argument("--fresh", action="store_true", help="ignore runs recorded in out/runs.jsonl")
    args = parser.parse_args(argv)

    from dskd_core.toy import build_toy_world

    bench_dir = Path(__file__).resolve().parent
    budget, rows = (QUICK_BUDGET, QUICK_ROWS) if args.quick else (FULL_BUDGET, ROWS)
    if args.ablation:
        rows = ABLATION_ROWS
    if args.seeds:
        budget = replace(budget, seeds=tuple(range(args.seeds)))
    if args.steps:
        budget = replace(budget, steps=args.steps)
    if args.train_examples:
        budget = replace(budget, train_examples=args.train_examples)
    if args.threads:
        budget = replace(budget, threads=args.threads)
    if args.jobs:
        budget = replace(budget, jobs=args.jobs)
    if args.rows:
        wanted = args.rows.split(",")
        unknown = sorted(set(wanted) - {r.name for r in ROWS + QUICK_ROWS + ABLATION_ROWS})
        if unknown:
            parser.error(f"unknown rows {unknown}; rows: {', '.join(r.name for r in ROWS)}")
        rows = [
            r for r in {r.name: r for r in QUICK_ROWS + ABLATION_ROWS + ROWS}.values() if r.name in wanted
        ]
    size = "fast" if args.quick else "full"
    world_dir = args.world or (
        bench_dir / "out" / "toy_world_fast" if args.quick else bench_dir.parent / "toy_world"
    )
    # The ablation shares the main run's directory: its sft/vanilla_kd_fkl/dskd_fkl runs are reused from there.
    out = args.out or bench_dir / "out" / ("quality-quick" if args.quick else "quality")
    stem, plot = ("ablation", "ablation.png") if args.ablation else ("results", "quality.png")
    if args.fresh and (out / "runs.jsonl").exists():
        (out / "runs.jsonl").unlink()
    world = build_toy_world(world_dir, size=size, seed=0, progress=print)
    summary = run_bench(world, rows, budget, out)
    summary["command"] = "bench/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (out / f"{stem}.json").write_text(json.dumps(summary, indent=2))
    write_markdown(summary, out / f"{stem}.md")
    write_plot(summary, out / plot)
    print(f"wrote {out / f'{stem}.md'}, {out / plot} ({summary['bench_seconds']:.0f} s)")
    return summary


if __name__ == "__main__":
    main()
