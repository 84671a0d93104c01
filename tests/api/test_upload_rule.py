"""Upload validation applies the engine's record rule: what a job would refuse as bad_data is refused at upload.

Each record below is uploaded alone and also read by the engine (`load_records`, the reader a job uses); the
two verdicts must agree, so an upload can never succeed and then fail its job on the same record.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dskd_core.data.records import DataError, load_records
from tests.api.conftest import assert_problem, upload


def chat(*turns: tuple[str, str]) -> dict[str, Any]:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


# (record, what the refusal names); None = a record the engine trains on.
RECORDS: list[tuple[Any, str | None]] = [
    ({"prompt": "2+2?", "response": "4"}, None),
    ({"instruction": "Add.", "input": "2 and 2", "output": "4"}, None),
    ({"query": "2+2?", "target": "4"}, None),  # layouts the engine detects beyond the common ones
    (chat(("system", "Be brief."), ("user", "hi"), ("assistant", "hello")), None),
    ({"prompt": "", "response": "4"}, "prompt ('prompt') is empty"),
    ({"prompt": "  \n", "response": "4"}, "prompt ('prompt') is empty"),
    ({"prompt": "2+2?", "response": ""}, "response ('response') is empty"),
    ({"question": "2+2?", "answer": " "}, "response ('answer') is empty"),
    (chat(("user", "hi"), ("assistant", "")), "response ('messages (last assistant turn)') is empty"),
    (chat(("user", ""), ("assistant", "hello")), "prompt ('messages') is empty"),
    (chat(("assistant", "hello")), "starts with the assistant turn"),
    (chat(("user", "hi")), "no assistant turn"),
    ({"messages": []}, "non-empty list"),
    ({"messages": [{"role": "user"}]}, "turn 1"),
    ({"prompt": "2+2?", "response": 4}, "field 'response' must be text"),
    ({"prompt": None, "response": "4"}, "no prompt field"),
    ({"prompt": "2+2?"}, "no response field"),
    ([1, 2], "expected an object"),
    ("text", "expected an object"),
]


def engine_problem(record: Any, tmp_path: Path) -> str | None:
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    try:
        load_records(path)
    except DataError as e:
        return str(e)
    return None


@pytest.mark.parametrize(("record", "needle"), RECORDS, ids=[str(i) for i in range(len(RECORDS))])
def test_upload_and_engine_agree_on_each_record(
    client: TestClient, alice, tmp_path: Path, record: Any, needle: str | None
) -> None:
    engine = engine_problem(record, tmp_path)
    response = upload(client, alice, [json.dumps({"prompt": "fine", "response": "ok"}), json.dumps(record)])
    if needle is None:
        assert engine is None, engine
        assert response.status_code == 201, response.text
        assert response.json()["row_count"] == 2
        return
    assert engine is not None and needle in engine, engine
    error = assert_problem(response, 422, "file")["errors"][0]
    # The upload names the line and gives the engine's reason, without the engine's own location prefix.
    assert error["loc"] == ["body", "file", "line 2"]
    assert needle in error["msg"] and "record:" not in error["msg"], error["msg"]


def test_the_upload_rule_does_not_import_torch() -> None:
    # The API process stays light: the shared record rule lives in a torch-free module.
    code = "import sys, api.main, api.services.datasets; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
