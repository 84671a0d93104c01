"""The run history: metrics.jsonl beside the checkpoints (the same points the service serves), cleaned on
resume, and forwarded to accelerate's trackers by training.report_to."""

from __future__ import annotations

import json

import pytest

from dskd_core.history import HISTORY_FILE, RunHistory, flat_config, read_history
from dskd_core.progress import NullSink, ProgressEvent
from dskd_core.train import run_job
from tests.core.test_train import ListSink, make_spec


def step(n: int, **metrics: float) -> ProgressEvent:
    return ProgressEvent("step", step=n, total_steps=10, epoch=n / 10, metrics=metrics)


def test_lines_per_step_and_eval_and_resume_drops_the_lost_steps(tmp_path) -> None:
    inner = ListSink()
    history = RunHistory(tmp_path, inner, clock=lambda: 100.0)
    history.emit(ProgressEvent("started"))
    history.emit(ProgressEvent("eval", step=0, metrics={"dev_ce": 3.0}))
    for n in (1, 2, 3):
        history.emit(step(n, loss=1.0 / n, lr=1e-3, flag=True, bad=float("nan")))
    history.emit(ProgressEvent("checkpoint", step=3))
    assert len(inner.events) == 6  # every event passes on
    lines = read_history(tmp_path)
    assert [(line["kind"], line["step"]) for line in lines] == [
        ("eval", 0),
        ("train", 1),
        ("train", 2),
        ("train", 3),
    ]
    assert lines[1] == {
        "kind": "train",
        "step": 1,
        "epoch": 0.1,
        "time": 100.0,
        "metrics": {"loss": 1.0, "lr": 1e-3},
    }

    resumed = RunHistory(tmp_path, NullSink())  # the process died after step 3, the checkpoint is at step 2
    resumed.emit(ProgressEvent("started", step=2))
    resumed.emit(step(3, loss=0.3))
    assert [(line["step"], line["metrics"].get("loss")) for line in read_history(tmp_path)] == [
        (0, None),
        (1, 1.0),
        (2, 0.5),
        (3, 0.3),
    ]


def test_a_training_run_writes_its_history_and_reports_to_tensorboard(toy_world, tmp_path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sink = ListSink()
    spec = make_spec(toy_world, max_steps=4, eval_interval=2, report_to=["tensorboard"])
    run_job(spec, tmp_path, sink=sink)
    lines = read_history(tmp_path)
    steps = [e for e in sink.events if e.type == "step"]
    train = [line for line in lines if line["kind"] == "train"]
    assert [line["step"] for line in train] == [e.step for e in steps] == [1, 2, 3, 4]
    assert [line["metrics"]["loss"] for line in train] == [e.metrics["loss"] for e in steps]
    assert [line["step"] for line in lines if line["kind"] == "eval"] == [0, 2, 4]

    runs = list((tmp_path / "trackers").iterdir())
    assert len(runs) == 1
    events = EventAccumulator(str(runs[0])).Reload()
    logged = events.Scalars("train/loss")
    assert [s.step for s in logged] == [1, 2, 3, 4]
    assert [s.value for s in logged] == pytest.approx([e.metrics["loss"] for e in steps], rel=1e-6)
    assert [s.step for s in events.Scalars("eval/dev_ce")] == [0, 2, 4]


def test_report_to_defaults_to_none_and_the_spec_flattens(toy_world) -> None:
    spec = make_spec(toy_world)
    assert spec.training.report_to == []
    assert make_spec(toy_world, report_to="none").training.report_to == []
    flat = flat_config(spec)
    assert flat["training.max_steps"] == 6 and flat["distill.method"] == "sft"
    assert all(v is None or isinstance(v, bool | int | float | str) for v in flat.values())
    assert json.loads(json.dumps(flat)) == flat
    assert HISTORY_FILE == "metrics.jsonl"
