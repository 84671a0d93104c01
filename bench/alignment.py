"""Exact-alignment throughput and alignment ratio: the training path versus the published per-token string loop.

    .venv/bin/python bench/alignment.py                 # 1,000 sequences of ~512 teacher tokens
    .venv/bin/python bench/alignment.py --quick         # 100 sequences (seconds)
    .venv/bin/python bench/alignment.py --cma-memory    # + CMA peak memory, blockwise vs unblocked (needs dskd_cma)

Tokenizers: the toy world's byte-level BPE (teacher) and SentencePiece-style BPE (student), trained here on toy
task text. Sequences: toy records ("prompt\\nresponse\\n") concatenated until the teacher tokenisation reaches
~512 tokens, EOS appended on both sides.

* training path: `eta_teacher_index` on right-padded label arrays, 256 examples per call (as the data pipeline
  calls it), default (numba) backend and the pure-numpy backend; table building (once per pair) timed apart.
* string loop: the published rule — token strings, `▁`/`Ġ` stripped, two pointers with string prefixes.
* reference: our two-pointer walk on canonical bytes, one Python step per token (same pairs as the fast path).
Ratio = aligned student positions / student positions. Independently, from the tokenizers' own character offsets,
the bench counts the student tokens whose non-empty span of non-space characters equals a teacher token's (the
pairs any exact alignment should find) and reports the share of those the training path aligned. Times are CPU seconds of this process (single-threaded), so a busy machine does not skew the comparison.
Figures come from one run; nothing is hard-coded.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dskd_core.alignment import eta_teacher_index, exact_aligner, exact_alignment, mined_teacher_index
from dskd_core.toy.tasks import generate
from dskd_core.toy.tokenizers import train_byte_level_bpe, train_sentencepiece_bpe

CHUNK = 256


def string_loop_alignment(t_ids: list[int], s_ids: list[int], teacher, student) -> list[tuple[int, int]]:
    """The published rule: compare token strings with the space markers stripped."""
    t_strs = [t.replace("▁", "").replace("Ġ", "") for t in teacher.convert_ids_to_tokens(t_ids)]
    s_strs = [s.replace("▁", "").replace("Ġ", "") for s in student.convert_ids_to_tokens(s_ids)]
    pairs, i, j, t_prefix, s_prefix = [], 0, 0, "", ""
    while i < len(t_strs) and j < len(s_strs):
        t_next, s_next = t_prefix + t_strs[i], s_prefix + s_strs[j]
        if t_prefix == s_prefix and t_strs[i] == s_strs[j]:
            pairs.append((i, j))
        if len(t_next) <= len(s_next):
            t_prefix, i = t_next, i + 1
        if len(s_next) <= len(t_next):
            s_prefix, j = s_next, j + 1
    return pairs


def boundary_bound(text: str, teacher, student) -> set[int]:
    """Student tokens whose span of non-space characters equals a teacher token's (tokenizers' own offsets)."""
    nonspace_before = np.concatenate([[0], np.cumsum([c != " " for c in text])])

    def spans(tok) -> list[tuple[int, int]]:
        offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return [(int(nonspace_before[a]), int(nonspace_before[b])) for a, b in offsets]

    # A span shared by several tokens of one side (pieces of one multi-byte character) is not byte-precise.
    t_spans, s_spans = spans(teacher), spans(student)
    t_unique = {x for x in t_spans if t_spans.count(x) == 1}
    return {j for j, x in enumerate(s_spans) if x[1] > x[0] and s_spans.count(x) == 1 and x in t_unique}


def build_sequences(
    n: int, teacher, student, target: int = 512
) -> tuple[list[list[int]], list[list[int]], list[str]]:
    records = generate(n * 40, "train", seed=0, stream=9)
    rng = random.Random(0)
    t_seqs, s_seqs, texts = [], [], []
    for _ in range(n):
        text, t_ids = "", []
        while len(t_ids) < target:
            record = rng.choice(records)
            text += f"{record['prompt']}\n{record['response']}\n"
            t_ids = teacher.encode(text, add_special_tokens=False)
        s_ids = student.encode(text, add_special_tokens=False)
        t_seqs.append([*t_ids, teacher.eos_token_id])
        s_seqs.append([*s_ids, student.eos_token_id])
        texts.append(text)
    return t_seqs, s_seqs, texts


def pad(rows: list[list[int]]) -> np.ndarray:
    out = np.full((len(rows), max(map(len, rows))), -100, dtype=np.int64)
    for k, row in enumerate(rows):
        out[k, : len(row)] = row
    return out


def timed(fn) -> tuple[float, object]:
    # CPU time of this process: other jobs on a shared machine must not count against either side.
    start = time.process_time()
    result = fn()
    return time.process_time() - start, result


def cma_peak_memory(
    n: int = 1024, m: int = 1024, blocks: tuple[int, ...] = (64, 256)
) -> dict[str, float] | None:
    """Peak tensor memory of dskd_cma's attention terms (forward + backward), blockwise vs unblocked, n = m = 1024.

    `dskd_cma.cma_peak_memory_pair(n, m, block=b)` gives two zero-argument steps over random rows of one example
    (d_s = 64, d_t = 96, V = 512): `cma_sums` with `b` query rows per block, and with one block holding every
    row (the unblocked form, whose `[n, m]` scores and softmax exist at once). Peaks are allocator high-water
    marks relative to the step's start (bench/loss_memory.py), so inputs and parameters are not counted.
    """
    try:
        from dskd_core.distillers import dskd_cma
    except ImportError as e:
        print(f"cma memory: skipped — dskd_core.distillers.dskd_cma is not there yet ({e})")
        return None
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from loss_memory import peak_tensor_bytes

    result: dict[str, float] = {}
    for block in blocks:
        blockwise, unblocked = dskd_cma.cma_peak_memory_pair(n, m, block=block)
        result[f"block_{block}_mib"] = peak_tensor_bytes(blockwise) / 2**20
    result["unblocked_mib"] = peak_tensor_bytes(unblocked) / 2**20
    shown = ", ".join(f"{k.removesuffix('_mib').replace('_', ' ')} {v:.1f} MiB" for k, v in result.items())
    print(f"cma memory n=m={n} (one [n, m] fp32 score tensor = {n * m * 4 / 2**20:.1f} MiB): {shown}")
    return result


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 sequences instead of 1,000")
    parser.add_argument("--sequences", type=int, default=None)
    parser.add_argument("--cma-memory", action="store_true", help="also measure dskd_cma peak memory")
    args = parser.parse_args(argv)
    n = args.sequences or (100 if args.quick else 1000)

    corpus = [f"{r['prompt']}\n{r['response']}" for r in generate(3000, "train", seed=0, stream=0)]
    teacher = train_byte_level_bpe(corpus, 2000)
    student = train_sentencepiece_bpe(corpus, 1200)
    t_seqs, s_seqs, texts = build_sequences(n, teacher, student)
    student_tokens = sum(map(len, s_seqs))
    print(f"{n} sequences: teacher {np.mean([len(s) for s in t_seqs]):.0f} tokens, student "
          f"{np.mean([len(s) for s in s_seqs]):.0f} tokens on average")  # fmt: skip

    build_s, _ = timed(lambda: exact_aligner(teacher, student))
    t_labels, s_labels = pad(t_seqs), pad(s_seqs)

    def training_path(backend: str) -> np.ndarray:
        return np.concatenate(
            [
                eta_teacher_index(
                    t_labels[k : k + CHUNK], s_labels[k : k + CHUNK], teacher, student, backend=backend
                )
                for k in range(0, n, CHUNK)
            ]
        )

    eta_teacher_index(
        t_labels[:1], s_labels[:1], teacher, student
    )  # numba compiles (or loads its cache) here
    fast_s, index = timed(lambda: training_path("numba"))
    numpy_s, numpy_index = timed(lambda: training_path("numpy"))
    assert (numpy_index == index).all(), "numba and numpy backends disagree"
    loop_s, loop_pairs = timed(
        lambda: [string_loop_alignment(t, s, teacher, student) for t, s in zip(t_seqs, s_seqs, strict=True)]
    )
    ref_s, ref_pairs = timed(
        lambda: [exact_alignment(t, s, teacher, student) for t, s in zip(t_seqs, s_seqs, strict=True)]
    )
    fast_aligned = int((index >= 0).sum())
    ref_aligned = sum(map(len, ref_pairs))
    assert fast_aligned == ref_aligned, "fast path and reference disagree"
    mined_n = min(n, 50)
    mined_teacher_index(t_labels[:1], s_labels[:1], teacher, student)  # compile outside the timing
    mined_s, mined_index = timed(
        lambda: mined_teacher_index(t_labels[:mined_n], s_labels[:mined_n], teacher, student)
    )

    bounds = [boundary_bound(x, teacher, student) for x in texts]
    figures = {
        "fast_seq_per_s": n / fast_s,
        "numpy_seq_per_s": n / numpy_s,
        "numpy_speedup_vs_string_loop": loop_s / numpy_s,
        "string_loop_seq_per_s": n / loop_s,
        "reference_seq_per_s": n / ref_s,
        "speedup_vs_string_loop": loop_s / fast_s,
        "fast_ratio": fast_aligned / student_tokens,
        "string_loop_ratio": sum(map(len, loop_pairs)) / student_tokens,
        "coinciding_fraction": sum(map(len, bounds)) / student_tokens,
        "recall_of_coinciding": sum(
            len(b & set(np.flatnonzero(row >= 0).tolist())) for b, row in zip(bounds, index, strict=True)
        )
        / max(sum(map(len, bounds)), 1),
        "table_build_s": build_s,
        "mined_seq_per_s": mined_n / mined_s,
        "mined_paired_ratio": float((mined_index >= 0).sum() / (s_labels[:mined_n] != -100).sum()),
    }
    print(f"training path (eta_teacher_index, numba, {CHUNK}/call): {figures['fast_seq_per_s']:,.0f} seq/s, "
          f"ratio {figures['fast_ratio']:.3f} ({figures['coinciding_fraction']:.3f} of student tokens have a teacher token with the same non-space "
          f"character span; {figures['recall_of_coinciding']:.3f} of those are aligned)")  # fmt: skip
    print(f"numpy backend: {figures['numpy_seq_per_s']:,.0f} seq/s "
          f"({figures['numpy_speedup_vs_string_loop']:.1f}x the string loop), same pairs")  # fmt: skip
    print(f"published string loop: {figures['string_loop_seq_per_s']:,.0f} seq/s, "
          f"ratio {figures['string_loop_ratio']:.3f}")  # fmt: skip
    print(f"reference two-pointer on bytes: {figures['reference_seq_per_s']:,.0f} seq/s (same pairs as fast)")
    print(f"speed-up vs string loop: {figures['speedup_vs_string_loop']:.1f}x; "
          f"pair tables built once in {build_s:.3f} s")  # fmt: skip
    print(
        f"MinED (numba DP): {figures['mined_seq_per_s']:,.1f} seq/s, 1:1 paired {figures['mined_paired_ratio']:.3f}"
    )
    if args.cma_memory:
        cma_peak_memory()
    return figures


if __name__ == "__main__":
    main()
