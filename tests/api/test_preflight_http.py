"""Submission-time pre-flight: the tokenizer pair is checked before the 201, with the tokenizers library alone,
and agrees with the engine's rule (dskd_core.preflight.check_pair)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.services.tokenizer_pair import tokenizer_fingerprint
from tests.api.conftest import assert_problem, job_body


def _pair_body(dataset_id: str, teacher: str, student: str, method: str) -> dict[str, Any]:
    return job_body(
        dataset_id,
        teacher={"name_or_path": teacher},
        student={"name_or_path": student},
        distill={"method": method},
    )


@pytest.fixture
def world_models(settings, toy_world) -> Path:
    settings.models_root = Path(toy_world.root)
    return settings.models_root


def test_incompatible_method_is_refused_with_the_valid_ones(
    client: TestClient, alice, dataset_id: str, world_models: Path
) -> None:
    for method in ("dskd", "vanilla_kd"):
        response = client.post(
            "/v1/jobs", headers=alice, json=_pair_body(dataset_id, "teacher", "cross_student", method)
        )
        problem = assert_problem(response, 422, "distill.method")
        msg = next(e["msg"] for e in problem["errors"] if e["field"] == "distill.method")
        assert f"method '{method}' needs the teacher and the student to share one tokenizer" in msg
        assert (
            "Valid methods for this pair: sft, seqkd, dskd_cma, dskd_eta, shared_vocab_kd, uld, mined." in msg
        )
        assert str(world_models) not in response.text
    for teacher, student, method in (
        ("teacher", "cross_student", "dskd_cma"),
        ("teacher", "student", "dskd"),
    ):
        response = client.post(
            "/v1/jobs", headers=alice, json=_pair_body(dataset_id, teacher, student, method)
        )
        assert response.status_code == 201, response.text


def _engine_same_vocabulary(a: Path, b: Path) -> bool:
    from transformers import AutoTokenizer

    from dskd_core.distillers.common import same_vocabulary

    return same_vocabulary(AutoTokenizer.from_pretrained(a), AutoTokenizer.from_pretrained(b))


def _variant(src: Path, dst: Path, **config: str) -> Path:
    """A copy of a tokenizer directory (no weights) with some tokenizer_config.json entries changed."""
    dst.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        shutil.copy(src / name, dst / name)
    saved = json.loads((dst / "tokenizer_config.json").read_text())
    (dst / "tokenizer_config.json").write_text(json.dumps({**saved, **config}))
    return dst


def test_verdict_agrees_with_the_engine(toy_world, tmp_path: Path) -> None:
    root = Path(toy_world.root)
    pairs = [
        (root / "teacher", root / "student"),
        (root / "teacher", root / "cross_student"),
        (root / "teacher", _variant(root / "teacher", tmp_path / "other_pad", pad_token="<|endoftext|>")),
        (root / "teacher", _variant(root / "teacher", tmp_path / "other_eos", eos_token="<|pad|>")),
    ]
    verdicts = [tokenizer_fingerprint(a) == tokenizer_fingerprint(b) for a, b in pairs]
    assert verdicts == [_engine_same_vocabulary(a, b) for a, b in pairs]
    assert verdicts == [True, False, True, False]  # pad may differ; eos may not


def test_unreadable_tokenizer_is_a_422_not_a_500(
    client: TestClient, alice, dataset_id: str, world_models: Path, tmp_path: Path
) -> None:
    broken = world_models / "broken_tok"
    broken.mkdir(exist_ok=True)
    try:
        (broken / "tokenizer.json").write_text("{not json")
        response = client.post(
            "/v1/jobs", headers=alice, json=_pair_body(dataset_id, "teacher", "broken_tok", "dskd")
        )
        assert "cannot be read" in assert_problem(response, 422)["errors"][0]["msg"]
    finally:
        shutil.rmtree(broken)


def test_the_api_imports_neither_torch_nor_transformers(tmp_path: Path, toy_world) -> None:
    code = f"""
import sys
from pathlib import Path
from api.main import create_app
from api.settings import Settings
from api.services.tokenizer_pair import pair_problem
from dskd_core.spec import Method
create_app(Settings(data_dir={str(tmp_path)!r}))
root = Path({str(toy_world.root)!r})
assert pair_problem(Method.dskd, root / "teacher", root / "cross_student")
print(sorted(m for m in ("torch", "transformers") if m in sys.modules))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"
