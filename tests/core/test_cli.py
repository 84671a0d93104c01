"""The `dskd` command line: help, schema, readable refusals with exit code 2, a tiny training run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from dskd_cli.main import app
from dskd_core.spec import JobSpec

runner = CliRunner()


def write_spec(path, world, **sections) -> None:
    spec = {
        "student": {"name_or_path": str(world.student)},
        "teacher": {"name_or_path": str(world.teacher)},
        "data": {"path": str(world.train)},
        "training": {"max_steps": 2, "batch_size": 4, "max_length": 64, "max_prompt_length": 32},
    }
    for key, value in sections.items():
        spec[key] = {**spec.get(key, {}), **value}
    path.write_text(yaml.safe_dump(spec))


def test_help_is_fast_and_shows_examples():
    # A fresh interpreter: the help must not import torch or transformers.
    code = "import sys; from dskd_cli.main import app; print('torch' in sys.modules, 'transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split() == [
        "False",
        "False",
    ]
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "dskd train job.yaml" in result.output and "spec-schema" in result.output


def test_the_engine_never_imports_the_service():
    # Layering: dskd_core is usable without api/worker (the CLI sits above all three), lazy imports included.
    import ast
    from pathlib import Path

    import dskd_core

    upward = []
    for path in Path(dskd_core.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            upward += [f"{path.name}: {n}" for n in names if n.split(".")[0] in {"api", "worker", "dskd_cli"}]
    assert upward == []


def test_spec_schema_is_the_job_spec_schema():
    result = runner.invoke(app, ["spec-schema"])
    assert result.exit_code == 0
    assert json.loads(result.output) == JobSpec.model_json_schema()


@pytest.mark.parametrize(
    ("sections", "path", "message"),
    [
        ({"training": {"precision": "fp16"}}, "training.precision", "fp16 is not supported"),
        ({"student": {"dtype": "float16"}}, "student.dtype", "float16 is not supported"),
        ({"distill": {"divergence": "wasserstein"}}, "distill.divergence", "'fkl'"),
    ],
)
def test_bad_specs_exit_2_with_the_field_path(toy_world, tmp_path, sections, path, message):
    spec_file = tmp_path / "job.yaml"
    write_spec(spec_file, toy_world, **sections)
    result = runner.invoke(app, ["train", str(spec_file), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert f"{path}: " in result.output and message in result.output
    assert "Traceback" not in result.output
    with pytest.raises(ValidationError, match=message):  # the same refusal without the CLI
        JobSpec.from_file(spec_file)


def test_unknown_override_and_missing_file_exit_2(toy_world, tmp_path):
    spec_file = tmp_path / "job.yaml"
    write_spec(spec_file, toy_world)
    result = runner.invoke(app, ["train", str(spec_file), "--set", "training.warp_speed=9"])
    assert result.exit_code == 2 and "training.warp_speed: Extra inputs are not permitted" in result.output
    result = runner.invoke(app, ["train", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "no such spec file" in result.output


def test_cross_vocabulary_pair_with_vanilla_kd_exits_2(toy_world, tmp_path):
    spec_file = tmp_path / "job.yaml"
    write_spec(spec_file, toy_world, student={"name_or_path": str(toy_world.cross_student)})
    result = runner.invoke(
        app, ["train", str(spec_file), "--method", "vanilla_kd", "--run-dir", str(tmp_path / "r")]
    )
    assert result.exit_code == 2
    assert "share one tokenizer" in result.output and "Traceback" not in result.output


def test_train_runs_and_prints_the_export(toy_world, tmp_path):
    spec_file = tmp_path / "job.yaml"
    write_spec(spec_file, toy_world, data={"dev_path": str(toy_world.dev), "dev_max_examples": 8})
    run_dir = tmp_path / "run"
    args = [
        "train",
        str(spec_file),
        "--method",
        "sft",
        "--set",
        "training.max_steps=3",
        "--run-dir",
        str(run_dir),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"exported student: {run_dir / 'export'}" in result.output
    assert "completed: 3/3 steps" in result.output
    assert "dev loss (response CE/token): before " in result.output  # no eval_interval: start and end only
    manifest = json.loads((run_dir / "export" / "manifest.json").read_text())
    assert manifest["method"] == "sft" and manifest["spec"]["training"]["max_steps"] == 3
