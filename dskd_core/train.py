"""The training loop: one job spec in, a distilled and exported student out.

Read `run_job` top to bottom: set-up (`training.setup`: pre-flight, models, data, distiller, optimizer, resume),
the loop (`training.step`: one optimizer step over the accumulated micro-batches; then logging, and
`training.evaluation`: dev evaluation and checkpoints), the final evaluation and the export. Everything runs
through `accelerate`, so the same code uses a CPU, one GPU or several processes.
"""

from __future__ import annotations

import time
from pathlib import Path

from dskd_core.cache import TeacherCache
from dskd_core.cache.fill import CacheBuildCancelled, open_teacher_cache, uses_teacher_cache
from dskd_core.errors import PreflightError
from dskd_core.history import RunHistory
from dskd_core.progress import CancelToken, NeverCancel, NullSink, ProgressSink, RunResult
from dskd_core.spec import JobSpec
from dskd_core.training.evaluation import after_step, dev_ce, evaluate, event, finish, save
from dskd_core.training.setup import Setup, import_distillers, lr_lambda, make_accelerator, prepare, start_run
from dskd_core.training.step import TrainingModule, batch_stream, count_tokens, optimizer_step, train_step

# The names other modules and tests have always imported from here.
__all__ = [
    "PreflightError",
    "Setup",
    "TrainingModule",
    "count_tokens",
    "dev_ce",
    "evaluate",
    "import_distillers",
    "lr_lambda",
    "make_accelerator",
    "prepare",
    "run_job",
    "train_step",
]


def run_job(
    spec: JobSpec,
    run_dir: str | Path,
    *,
    sink: ProgressSink | None = None,
    cancel: CancelToken | None = None,
    device: str | None = None,
    teacher_cache: TeacherCache | None = None,
) -> RunResult:
    """Train `spec` in `run_dir` (resuming from its newest complete checkpoint) and export the student.

    With `teacher_cache` (and `training.teacher_cache` not "off"), KD methods read the teacher's hidden states
    from that cache, computing only the examples it does not hold yet.
    """
    from accelerate.utils import set_seed

    cancel = cancel or NeverCancel()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t = spec.training
    accelerator = make_accelerator(t.precision, device)
    # One process reports: the others would repeat the same events.
    sink = (sink or NullSink()) if accelerator.is_main_process else NullSink()
    if accelerator.is_main_process:  # run_dir/metrics.jsonl and training.report_to's trackers
        sink = RunHistory.open(spec, run_dir, sink)
    set_seed(t.seed)

    # ---- set-up: everything that can fail does so before the first step
    if spec.distill.method == "seqkd":
        from dskd_core.seqkd import GenerationCancelled, ensure_teacher_responses

        try:  # the teacher writes the training responses first (resumable; one process writes the file)
            if accelerator.is_main_process:
                ensure_teacher_responses(spec, run_dir, accelerator.device, sink=sink, cancel=cancel)
        except GenerationCancelled:
            return RunResult("cancelled", 0, 0, None, {})
        accelerator.wait_for_everyone()
    run = start_run(spec, run_dir, accelerator)
    state = run.state
    resumed = f"resumed from {run.resumed_from}" if run.resumed_from else None
    sink.emit(event("started", run, message=resumed))
    if teacher_cache is not None and uses_teacher_cache(spec):
        try:
            run.setup.teacher_cache = open_teacher_cache(
                spec, run.setup, accelerator, teacher_cache, sink=sink, cancel=cancel
            )
        except CacheBuildCancelled:
            return RunResult("cancelled", state.step, run.total_steps, None, {})
    if state.step == 0 and run.setup.dev_set is not None:  # the "before" figure
        sink.emit(event("eval", run, evaluate(run.setup, accelerator, with_teacher=True)))

    # ---- the loop
    batches = batch_stream(run.setup, t.batch_size, t.seed, state.epoch, state.batches_in_epoch, accelerator)
    started, tokens_seen, last_metrics = time.perf_counter(), 0.0, {}
    while state.step < run.total_steps:
        if cancel.cancelled():
            save(run, sink, last_metrics)
            return RunResult("cancelled", state.step, run.total_steps, None, last_metrics)
        epoch_before = state.epoch
        metrics, n_tokens = optimizer_step(run, [next(batches) for _ in range(t.grad_accum)])
        tokens_seen += n_tokens
        last_metrics = metrics
        if state.step % t.log_interval == 0 or state.step == run.total_steps:
            elapsed = time.perf_counter() - started
            metrics |= {"tokens_per_s": tokens_seen / max(elapsed, 1e-9), "elapsed_s": elapsed}
            sink.emit(event("step", run, metrics))
        after_step(run, sink, epoch_ended=epoch_before < state.epoch)

    # ---- final evaluation and export
    return finish(run, sink, last_metrics)
