"""Cross-vocabulary alignment: canonical token bytes, the teacher→student id map, exact and MinED alignment.

Public API (everything takes transformers fast tokenizers; tables are cached per tokenizer content):

* `token_bytes_table(tok) -> list[bytes | None]`, `canonical_token_bytes(tok, id)`: the raw bytes each token
  stands for (byte-level BPE and SentencePiece decoded; None for special tokens). `token_table(tok)` has more.
* `build_vocab_map(teacher_tok, student_tok) -> LongTensor[V_t]` (−1 = no match) and
  `vocab_overlap(...) -> VocabOverlapReport` (`as_dict()`, `format()`); `tokenization_identical(...)`.
* Exact Token Alignment (§3.3): `exact_alignment(t_ids, s_ids, t_tok, s_tok) -> [(t_pos, s_pos)]` is the
  reference two-pointer walk. The training path is vectorised numpy over a whole batch:
  `align_batch(t_seqs, s_seqs, t_tok, s_tok) -> list[int64 [K, 2]]` and
  `eta_teacher_index(teacher_labels, student_labels, t_tok, s_tok) -> int64 [B, T_s]` (or [T_s]) — the collator
  calls the latter once per batch with the shifted label rows (−100 outside the response); `exact_aligner(...)`
  returns the cached per-pair object with the same methods. `backend="numba"` (default: the walk compiled) or
  `"numpy"` (array passes; same pairs, slower). `alignment_ratio(index, student_labels)`.
* MinED (§3.4): `mined_alignment(t_ids, s_ids, t_tok, s_tok) -> int64 [len(s_ids)]` (teacher position or −1)
  and `mined_teacher_index(teacher_labels, student_labels, t_tok, s_tok)`; compiled DP (numba).
"""

from dskd_core.alignment.canonical import (
    Convention,
    TokenTable,
    canonical_text_bytes,
    canonical_token_bytes,
    token_bytes_table,
    token_table,
)
from dskd_core.alignment.exact import (
    ExactAligner,
    align_batch,
    alignment_ratio,
    eta_teacher_index,
    exact_aligner,
    exact_alignment,
)
from dskd_core.alignment.mined import MinEDAligner, mined_aligner, mined_alignment, mined_teacher_index
from dskd_core.alignment.vocab import (
    VocabOverlapReport,
    build_vocab_map,
    tokenization_identical,
    vocab_overlap,
)

__all__ = [
    "Convention",
    "ExactAligner",
    "MinEDAligner",
    "TokenTable",
    "VocabOverlapReport",
    "align_batch",
    "alignment_ratio",
    "build_vocab_map",
    "canonical_text_bytes",
    "canonical_token_bytes",
    "eta_teacher_index",
    "exact_aligner",
    "exact_alignment",
    "mined_aligner",
    "mined_alignment",
    "mined_teacher_index",
    "token_bytes_table",
    "token_table",
    "tokenization_identical",
    "vocab_overlap",
]
