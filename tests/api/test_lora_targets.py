"""LoRA target modules are checked at submission (422 naming the field) from the student's config.json alone,
and the worker's pre-flight refuses the same targets before any weights load, with the same message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.services.lora_modules import LORA_MODULES, lora_problem
from dskd_core.errors import PreflightError
from dskd_core.preflight import adaptable_modules, check_lora_targets, unknown_lora_targets
from dskd_core.spec import LoraSpec, ModelSpec
from tests.api.conftest import assert_problem, job_body


@pytest.fixture
def world_models(settings, toy_world) -> Path:
    settings.models_root = Path(toy_world.root)
    return settings.models_root


def _lora_body(dataset_id: str, student: str, targets) -> dict:
    return job_body(
        dataset_id, student={"name_or_path": student, "lora": {"r": 4, "target_modules": targets}}
    )


def test_unknown_lora_modules_are_refused_at_submission(
    client: TestClient, alice, dataset_id: str, world_models: Path
) -> None:
    model_type = json.loads((world_models / "student" / "config.json").read_text())["model_type"]
    known = sorted(LORA_MODULES[model_type])
    response = client.post(
        "/v1/jobs", headers=alice, json=_lora_body(dataset_id, "student", [known[0], "q_prj"])
    )
    problem = assert_problem(response, 422, "student.lora.target_modules")
    msg = next(e["msg"] for e in problem["errors"] if e["field"] == "student.lora.target_modules")
    assert "no module named 'q_prj' in the student" in msg and repr(known[0]) not in msg.split(";")[0]
    assert ", ".join(known) in msg and str(world_models) not in response.text
    # A container that is not a layer LoRA can wrap ("layers") is refused too; an empty list is refused.
    for targets in (["layers"], []):
        response = client.post("/v1/jobs", headers=alice, json=_lora_body(dataset_id, "student", targets))
        assert_problem(response, 422, "student.lora.target_modules")
    for targets in (known, [f"self_attn.{known[-1]}"], "all-linear"):
        response = client.post("/v1/jobs", headers=alice, json=_lora_body(dataset_id, "student", targets))
        assert response.status_code == 201, (targets, response.text)


@pytest.mark.parametrize("model_type", sorted(LORA_MODULES))
def test_the_table_is_what_the_installed_transformers_builds(model_type: str) -> None:
    from transformers import CONFIG_MAPPING

    _, names = adaptable_modules(CONFIG_MAPPING[model_type](num_hidden_layers=1))
    assert LORA_MODULES[model_type] == {n.rsplit(".", 1)[-1] for n in names}


def test_the_engine_refuses_what_the_api_refuses(toy_world) -> None:
    root = Path(toy_world.root)
    for name in ("student", "cross_student", "teacher"):
        model_dir = root / name
        model_type = json.loads((model_dir / "config.json").read_text())["model_type"]
        _, names = adaptable_modules(__import__("transformers").AutoConfig.from_pretrained(model_dir))
        assert {n.rsplit(".", 1)[-1] for n in names} == LORA_MODULES[model_type]
        for targets in (sorted(LORA_MODULES[model_type])[:2], ["q_prj"], ["not_a_module"]):
            lora = LoraSpec(target_modules=targets)
            api_verdict = lora_problem(lora, model_dir)
            try:
                check_lora_targets(ModelSpec(name_or_path=str(model_dir), lora=lora))
                engine_verdict = None
            except PreflightError as e:
                engine_verdict = str(e)
            assert (api_verdict is None) == (engine_verdict is None), (name, targets)
            if api_verdict:
                assert engine_verdict == f"student.lora.target_modules: {api_verdict}"


def test_peft_matching_rule() -> None:
    names = ["model.layers.0.self_attn.q_proj", "lm_head"]
    assert unknown_lora_targets(["q_proj", "self_attn.q_proj", "lm_head", names[0]], names) == []
    # A target is a whole name part: "proj" is not a suffix match of "q_proj", "layers.0" is no layer.
    assert unknown_lora_targets(["proj", "_proj", "q_proj.", "head"], names) == [
        "proj",
        "_proj",
        "q_proj.",
        "head",
    ]


def test_an_unknown_model_type_gets_no_verdict_at_submission(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no_such_family"}))
    assert lora_problem(LoraSpec(target_modules=["anything"]), tmp_path) is None
    (tmp_path / "config.json").write_text("[1, 2]")
    assert lora_problem(LoraSpec(target_modules=["anything"]), tmp_path) is None


def test_the_api_table_needs_no_torch() -> None:
    code = (
        "import sys, api.services.lora_modules; print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "False False"


def test_the_worker_preflight_fails_the_job_before_any_weights_load(toy_world, monkeypatch) -> None:
    from dskd_core import models
    from dskd_core.preflight import preflight
    from dskd_core.spec import JobSpec

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("weights loaded"))
    spec = JobSpec.model_validate(
        {
            "student": {"name_or_path": str(toy_world.student), "lora": {"target_modules": ["q_prj"]}},
            "data": {"path": str(toy_world.train)},
            "distill": {"method": "sft"},
        }
    )
    with pytest.raises(PreflightError, match=r"student.lora.target_modules: no module named 'q_prj'"):
        preflight(spec)
