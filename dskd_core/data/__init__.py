"""Instruction data: records → prompt templates → tokenised examples → padded batches (docs/design.md).

- `records`: JSONL / JSON / Hugging Face dataset directories, layout detection, dev split, `DataError`;
- `templates`: `format_prompt` ("none", "chat", or a format string);
- `encode`: `encode_example` (separate prompt/response tokenisation, truncation, shifted labels);
- `batching`: `TokenizedDataset`, the dynamic-padding `Collator`, the resumable `epoch_order`;
- `build`: `build_datasets` from a `JobSpec`, with dual (student + teacher) tokenisation for cross-vocabulary
  methods.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dskd_core.data.batching import Collator, ResumableSampler, TokenizedDataset, epoch_order
    from dskd_core.data.build import (
        ALIGNMENTS,
        AlignFn,
        Datasets,
        Encoder,
        build_datasets,
        default_aligners,
        split_records,
    )
    from dskd_core.data.encode import IGNORE_INDEX, adds_bos, encode_example, encode_examples, response_span
    from dskd_core.data.records import DataError, FieldNames, Record, load_records, parse_record, split_dev
    from dskd_core.data.templates import format_prompt, prompt_with_context

# Names resolve lazily (PEP 562) so that `dskd_core.data.records` — the record rule the service applies at
# upload — can be imported without torch: batching and build need it, records and templates do not.
_HOME = {
    **dict.fromkeys(("Collator", "ResumableSampler", "TokenizedDataset", "epoch_order"), "batching"),
    **dict.fromkeys(
        (
            "ALIGNMENTS",
            "AlignFn",
            "Datasets",
            "Encoder",
            "build_datasets",
            "default_aligners",
            "split_records",
        ),
        "build",
    ),
    **dict.fromkeys(
        ("IGNORE_INDEX", "adds_bos", "encode_example", "encode_examples", "response_span"), "encode"
    ),
    **dict.fromkeys(
        ("DataError", "FieldNames", "Record", "load_records", "parse_record", "split_dev"), "records"
    ),
    **dict.fromkeys(("format_prompt", "prompt_with_context"), "templates"),
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value
    return value


__all__ = [
    "ALIGNMENTS",
    "IGNORE_INDEX",
    "AlignFn",
    "Collator",
    "DataError",
    "Datasets",
    "Encoder",
    "FieldNames",
    "Record",
    "ResumableSampler",
    "TokenizedDataset",
    "adds_bos",
    "build_datasets",
    "default_aligners",
    "encode_example",
    "encode_examples",
    "epoch_order",
    "format_prompt",
    "load_records",
    "parse_record",
    "prompt_with_context",
    "response_span",
    "split_dev",
    "split_records",
]
