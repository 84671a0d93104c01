"""Error codes come from the exception's type; the message text plays no part (except the legacy CUDA case)."""

from __future__ import annotations

import pydantic
import pytest
import torch

from dskd_core.data.records import DataError
from dskd_core.errors import NonFiniteLossError, PreflightError, error_code
from dskd_core.models import ModelLoadError
from dskd_core.spec import JobSpec


def validation_error() -> pydantic.ValidationError:
    with pytest.raises(pydantic.ValidationError) as info:
        JobSpec.model_validate({"student": {"name_or_path": "x"}, "training": {"lr": "fast"}})
    return info.value


class ChildOOM(torch.OutOfMemoryError):
    """Subclasses keep their parent's code (matched along the MRO)."""


# Every message is misleading on purpose: a classifier that reads the text would get each one wrong.
CASES = [
    (torch.OutOfMemoryError("Tried to allocate 2.00 GiB"), "out_of_memory"),
    (ChildOOM("allocator failed"), "out_of_memory"),
    (MemoryError(), "out_of_memory"),
    (MemoryError("bad data in record 3"), "out_of_memory"),
    (DataError("the loss is nan"), "bad_data"),
    (PreflightError("the job ran out of memory"), "preflight_failed"),
    (NonFiniteLossError("model not found"), "non_finite_loss"),
    (ModelLoadError("out of range"), "model_unavailable"),
    (FileNotFoundError(2, "No such file", "train.jsonl"), "file_not_found"),
    (KeyError("MemoryError"), "internal_error"),
    (ValueError("DataError: bad"), "internal_error"),
]


@pytest.mark.parametrize(("exc", "code"), CASES, ids=[f"{type(e).__name__}-{c}" for e, c in CASES])
def test_codes_follow_the_exception_type(exc: BaseException, code: str) -> None:
    assert error_code(exc) == code


def test_a_spec_validation_error_is_invalid_spec() -> None:
    assert error_code(validation_error()) == "invalid_spec"


def test_a_legacy_cuda_oom_runtime_error_is_recognised_by_its_text() -> None:
    # Some torch versions raise a plain RuntimeError for CUDA OOM; that one case is matched by its message.
    assert error_code(RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")) == "out_of_memory"
    assert error_code(RuntimeError("CUDA error: device-side assert triggered")) == "internal_error"
