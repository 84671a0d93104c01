"""Generation-based dev evaluation during training and best-checkpoint selection (EvalSpec.interval).

Off by default: it generates a response for every dev example with every seed of `EvalSpec`, which costs far
more than the dev loss. When `evaluation.interval` is set, the trainer calls `dev_generation_eval` every N
optimizer steps (or at the end of each epoch) and at the end of training; the step with the highest dev
`evaluation.metric` becomes `TrainState.best_step`, a checkpoint of it is written, rotation never deletes it, and
with `select_best` the export carries its weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dskd_core.checkpoint import TrainState
    from dskd_core.spec import JobSpec


def generation_due(interval: int | str | None, step: int, epoch_ended: bool) -> bool:
    """Whether the generation-based dev evaluation runs after `step` (EvalSpec.interval: N steps or "epoch")."""
    if interval is None:
        return False
    return epoch_ended if interval == "epoch" else step % int(interval) == 0


def dev_generation(student: Any, tokenizer: Any, dev_records: list, spec: JobSpec) -> dict[str, float]:
    """Dev Rouge-L and exact match of `student` (EvalSpec decoding; mean and std over its seeds).

    Every rank runs the same seeded passes, so all ranks reach the same best-checkpoint decision without
    communicating; seeded generation forks the RNG, so the training's random stream is left untouched.
    """
    from dskd_core.evaluate import evaluate_model, records_for_eval

    ev = spec.evaluation
    records = records_for_eval(dev_records[: ev.max_examples], spec.data.prompt_template, tokenizer)
    result = evaluate_model(student, tokenizer, records, settings=ev)
    return {
        "dev_rougeL": result.rougeL.mean,
        "dev_rougeL_std": result.rougeL.std,
        "dev_exact_match": result.exact_match.mean,
        "dev_exact_match_std": result.exact_match.std,
    }


def record_scores(state: TrainState, scores: dict[str, float], spec: JobSpec) -> bool:
    """Merge `scores` into the state's metrics; True when this step becomes the best one (ties keep the earlier)."""
    ev = spec.evaluation
    state.metrics = {**state.metrics, **scores}
    key = f"dev_{ev.metric}"
    previous = state.best_metrics.get(key)
    if not ev.select_best or (previous is not None and scores[key] <= previous):
        return False
    state.best_step, state.best_metrics = state.step, dict(state.metrics)
    return True
