"""Compiled kernels (numba): the exact two-pointer walk over a flat batch, and the MinED edit-distance DP.

Imported lazily, so importing `dskd_core.alignment` does not load numba.
"""

from __future__ import annotations

import numba
import numpy as np

DIAGONAL, TEACHER_GAP, STUDENT_GAP = 0, 1, 2


@numba.njit(cache=True, nogil=True)
def levenshtein(a: np.ndarray, a0: int, a1: int, b: np.ndarray, b0: int, b1: int, row: np.ndarray) -> int:
    """Edit distance between a[a0:a1] and b[b0:b1] (unit costs), with a caller-provided work row."""
    la, lb = a1 - a0, b1 - b0
    if la == 0:
        return lb
    if lb == 0:
        return la
    for y in range(lb + 1):
        row[y] = y
    for x in range(1, la + 1):
        diagonal = row[0]
        row[0] = x
        symbol = a[a0 + x - 1]
        for y in range(1, lb + 1):
            above = row[y]
            best = diagonal + (0 if symbol == b[b0 + y - 1] else 1)
            if row[y - 1] + 1 < best:
                best = row[y - 1] + 1
            if above + 1 < best:
                best = above + 1
            row[y] = best
            diagonal = above
    return row[lb]


@numba.njit(cache=True, nogil=True)
def mined_dp(
    teacher_ids: np.ndarray,
    student_ids: np.ndarray,
    teacher_symbols: np.ndarray,
    teacher_offsets: np.ndarray,
    student_symbols: np.ndarray,
    student_offsets: np.ndarray,
) -> tuple[np.ndarray, int]:
    """Global alignment: substitution = edit distance of the token symbol strings, gap = length + 1.

    Ties prefer the diagonal, then a teacher gap, then a student gap. Returns, per student position, the teacher
    position it is paired with on the optimal path (−1 for a gap), and the optimal total cost.
    """
    n, m = teacher_ids.size, student_ids.size
    cost = np.empty((n + 1, m + 1), dtype=np.int64)
    move = np.empty((n + 1, m + 1), dtype=np.uint8)
    teacher_gap = np.empty(n, dtype=np.int64)
    student_gap = np.empty(m, dtype=np.int64)
    longest = 1
    for i in range(n):
        t = teacher_ids[i]
        teacher_gap[i] = teacher_offsets[t + 1] - teacher_offsets[t] + 1
        longest = max(longest, teacher_gap[i])
    for j in range(m):
        s = student_ids[j]
        student_gap[j] = student_offsets[s + 1] - student_offsets[s] + 1
        longest = max(longest, student_gap[j])
    row = np.empty(longest + 1, dtype=np.int64)
    cost[0, 0] = 0
    for i in range(1, n + 1):
        cost[i, 0] = cost[i - 1, 0] + teacher_gap[i - 1]
        move[i, 0] = TEACHER_GAP
    for j in range(1, m + 1):
        cost[0, j] = cost[0, j - 1] + student_gap[j - 1]
        move[0, j] = STUDENT_GAP
    for i in range(1, n + 1):
        t = teacher_ids[i - 1]
        t0, t1 = teacher_offsets[t], teacher_offsets[t + 1]
        for j in range(1, m + 1):
            s = student_ids[j - 1]
            substitution = levenshtein(
                teacher_symbols, t0, t1, student_symbols, student_offsets[s], student_offsets[s + 1], row
            )
            best, step = cost[i - 1, j - 1] + substitution, DIAGONAL
            if cost[i - 1, j] + teacher_gap[i - 1] < best:
                best, step = cost[i - 1, j] + teacher_gap[i - 1], TEACHER_GAP
            if cost[i, j - 1] + student_gap[j - 1] < best:
                best, step = cost[i, j - 1] + student_gap[j - 1], STUDENT_GAP
            cost[i, j] = best
            move[i, j] = step
    paired = np.full(m, -1, dtype=np.int64)
    i, j = n, m
    while i > 0 and j > 0:
        step = move[i, j]
        if step == DIAGONAL:
            paired[j - 1] = i - 1
            i -= 1
            j -= 1
        elif step == TEACHER_GAP:
            i -= 1
        else:
            j -= 1
    return paired, cost[n, m]


@numba.njit(cache=True, nogil=True)
def two_pointer_batch(
    t_ids: np.ndarray,
    t_bounds: np.ndarray,
    s_ids: np.ndarray,
    s_bounds: np.ndarray,
    t_lengths: np.ndarray,
    t_keys: np.ndarray,
    s_lengths: np.ndarray,
    s_keys: np.ndarray,
    out_t: np.ndarray,
    out_s: np.ndarray,
) -> int:
    """The §3.3 walk (as `exact.two_pointer_alignment`) over every example of a flat batch.

    Example b owns t_ids[t_bounds[b]:t_bounds[b+1]] and likewise on the student side. Writes the flat indices of
    the aligned tokens to out_t/out_s and returns how many there are.
    """
    found = 0
    for b in range(t_bounds.size - 1):
        i, i_end, j, j_end = t_bounds[b], t_bounds[b + 1], s_bounds[b], s_bounds[b + 1]
        pa = pb = 0
        while i < i_end and j < j_end:
            ea = pa + t_lengths[t_ids[i]]
            eb = pb + s_lengths[s_ids[j]]
            if ea < eb:
                pa = ea
                i += 1
            elif eb < ea:
                pb = eb
                j += 1
            else:
                if pa == pb and t_keys[t_ids[i]] == s_keys[s_ids[j]]:
                    out_t[found] = i
                    out_s[found] = j
                    found += 1
                pa, pb = ea, eb
                i += 1
                j += 1
    return found
