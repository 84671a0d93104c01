"""Error kinds a user can act on, and the stable codes the service reports for them."""

from __future__ import annotations


class DskdError(Exception):
    """Base of the engine's user-facing errors."""

    code = "error"


class PreflightError(DskdError, ValueError):
    """The job cannot work as specified (e.g. the method does not suit the teacher/student pair)."""

    code = "preflight_failed"


class NonFiniteLossError(DskdError, FloatingPointError):
    """Training produced a NaN/inf loss."""

    code = "non_finite_loss"


# Matched by class name along the MRO so this module needs neither torch nor pydantic at import time.
_CODES_BY_NAME = {
    "ModelLoadError": "model_unavailable",
    "DataError": "bad_data",
    "PreflightError": "preflight_failed",
    "NonFiniteLossError": "non_finite_loss",
    "ValidationError": "invalid_spec",
    "OutOfMemoryError": "out_of_memory",
    "MemoryError": "out_of_memory",
    "FileNotFoundError": "file_not_found",
}


def error_code(exc: BaseException) -> str:
    for cls in type(exc).__mro__:
        code = _CODES_BY_NAME.get(cls.__name__)
        if code:
            return code
    if "out of memory" in str(exc).lower():  # CUDA OOM surfaces as RuntimeError on some versions
        return "out_of_memory"
    return "internal_error"
