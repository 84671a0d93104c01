"""SeqKD: CE on the teacher's generated responses (dskd_core/seqkd.py writes them before training)."""

from __future__ import annotations

from dskd_core.distillers.base import register
from dskd_core.distillers.sft import SFTDistiller
from dskd_core.spec import Method


@register(Method.seqkd)
class SeqKDDistiller(SFTDistiller):
    """The loss is SFT's; only the data differs (the trainer swaps in the teacher-written responses)."""
