"""Peak memory and time of the training loss (CE + FKL KD from hidden states), chunked vs naive, on CPU.

    .venv/bin/python bench/loss_memory.py            # N=2048 positions, d=256, V = 32k and 152k
    .venv/bin/python bench/loss_memory.py --quick    # tiny smoke run (seconds)

naive:   full fp32 logits [N, V] for student and teacher, log_softmax, divergence, mean (the textbook form).
chunked: `dskd_core.reduce.kd_loss_from_hidden` — logits exist one chunk of positions at a time, and the
         backward pass recomputes each chunk (activation checkpointing).
fused:   `dskd_core.reduce.fused_kd_loss_from_hidden` — same chunks, but each chunk's gradient is folded into
         the hidden/head gradients during the forward pass (loss weights known up front): no recomputation.

Peak memory = the highest number of bytes held by live torch CPU tensors during forward+backward, above what was
live before the step. It is counted exactly from the allocator's alloc/free events recorded by torch.profiler
(profile_memory=True), in a separate run from the timing so the profiler costs no time. As a cross-check, the
process RSS is sampled every 2 ms in a thread during the timed runs (RSS also counts allocator slack and
other libraries, and sampling can miss short peaks, so it is indicative only); the sampler runs in its own
untimed run because its thread competes for the GIL. Time = median wall-clock of the timed forward+backward
runs, after one untimed warm-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dskd_core.losses import divergence
from dskd_core.reduce import fused_kd_loss_from_hidden, kd_loss_from_hidden, safe_div

KD_RATE = 0.5
TAU = 2.0


def make_inputs(n: int, d: int, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "h_s": (torch.randn(n, d, generator=g)).requires_grad_(),
        "w_s": (torch.randn(vocab, d, generator=g) / d**0.5).requires_grad_(),
        "h_t": torch.randn(n, d, generator=g),
        "w_t": torch.randn(vocab, d, generator=g) / d**0.5,
        "labels": torch.randint(0, vocab, (n,), generator=g),
    }


def naive_step(x: dict[str, torch.Tensor], chunk_size: int) -> torch.Tensor:
    z_s = x["h_s"] @ x["w_s"].T
    z_t = x["h_t"] @ x["w_t"].T
    ce = F.cross_entropy(z_s, x["labels"])
    kd = divergence("fkl", z_s, z_t, temperature=TAU).mean()
    loss = (1 - KD_RATE) * ce + KD_RATE * kd
    loss.backward()
    return loss.detach()


def chunked_step(x: dict[str, torch.Tensor], chunk_size: int) -> torch.Tensor:
    sums = kd_loss_from_hidden(
        x["h_s"], x["w_s"], x["labels"], x["h_t"], x["w_t"], temperature=TAU, chunk_size=chunk_size
    )
    loss = (1 - KD_RATE) * safe_div(sums[0], sums[2]) + KD_RATE * safe_div(sums[1], sums[2])
    loss.backward()
    return loss.detach()


def fused_step(x: dict[str, torch.Tensor], chunk_size: int) -> torch.Tensor:
    n = x["labels"].numel()
    loss = fused_kd_loss_from_hidden(
        x["h_s"],
        x["w_s"],
        x["labels"],
        x["h_t"],
        x["w_t"],
        ce_weight=(1 - KD_RATE) / n,
        kd_weight=KD_RATE / n,
        temperature=TAU,
        chunk_size=chunk_size,
    )
    loss.backward()
    return loss.detach()


PATHS: dict[str, Callable[[dict[str, torch.Tensor], int], torch.Tensor]] = {
    "naive": naive_step,
    "chunked": chunked_step,
    "fused": fused_step,
}


def _zero_grads(x: dict[str, torch.Tensor]) -> None:
    for t in x.values():
        t.grad = None


def peak_tensor_bytes(step: Callable[[], torch.Tensor]) -> int:
    """Highest running sum of allocator events (alloc +, free −) during `step`, relative to its start."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        running += e.nbytes()
        peak = max(peak, running)
    return peak


class RssSampler:
    """Samples the process RSS in a thread (torch ops release the GIL, so the thread keeps running)."""

    def __init__(self, period_s: float = 0.002) -> None:
        import psutil

        self._proc = psutil.Process()
        self._period = period_s
        self._stop = threading.Event()
        self.baseline = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self._period)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(
    path: str, n: int, d: int, vocab: int, chunk_size: int, repeats: int
) -> dict[str, float | int | str]:
    x = make_inputs(n, d, vocab)
    step = PATHS[path]

    def run() -> torch.Tensor:
        _zero_grads(x)
        return step(x, chunk_size)

    loss = run()  # warm-up
    _zero_grads(x)  # freed before profiling, so every event the profiler sees is a whole alloc/free pair
    peak = peak_tensor_bytes(lambda: step(x, chunk_size))
    _zero_grads(x)
    with RssSampler() as rss:  # its own run: the sampling thread competes for the GIL and would skew timing
        step(x, chunk_size)
    times = []
    for _ in range(repeats):
        _zero_grads(x)
        t0 = time.perf_counter()
        step(x, chunk_size)
        times.append(time.perf_counter() - t0)
    grad_norm = float(x["h_s"].grad.norm())
    return {
        "path": path,
        "vocab": vocab,
        "n": n,
        "peak_bytes": peak,
        "rss_delta_bytes": rss.peak - rss.baseline,
        "seconds": statistics.median(times),
        "loss": float(loss),
        "grad_norm": grad_norm,
    }


def _gib(b: float) -> str:
    return f"{b / 2**30:8.3f}"


def main(argv: list[str] | None = None) -> list[dict[str, float | int | str]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of a few seconds")
    ap.add_argument("--n", type=int, default=2048, help="valid positions in the step")
    ap.add_argument("--d", type=int, default=256, help="hidden size (both models)")
    ap.add_argument("--vocab", type=int, nargs="+", default=[32000, 152064])
    ap.add_argument("--chunk-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.d, args.vocab, args.chunk_size, args.repeats = 256, 32, [2048], 64, 1

    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; N={args.n} d={args.d} "
        f"chunk={args.chunk_size}; loss = {1 - KD_RATE}·CE + {KD_RATE}·FKL(τ={TAU}), forward+backward"
    )
    print("peak = max live torch tensor bytes above the step's start (profiler alloc/free events, exact);")
    print("rss = sampled process RSS growth in a separate run (indicative); time = median of timed runs")
    rows = []
    header = f"{'path':8} {'V':>7} {'peak GiB':>9} {'rss GiB':>9} {'time s':>8} {'loss':>10} {'|grad h|':>10}"
    print(header)
    for vocab in args.vocab:
        for path in PATHS:
            r = measure(path, args.n, args.d, vocab, args.chunk_size, args.repeats)
            rows.append(r)
            print(
                f"{path:8} {vocab:7d} {_gib(r['peak_bytes']):>9} {_gib(r['rss_delta_bytes']):>9} "
                f"{r['seconds']:8.3f} {r['loss']:10.5f} {r['grad_norm']:10.5f}"
            )
    for vocab in args.vocab:
        naive = next(r for r in rows if r["vocab"] == vocab and r["path"] == "naive")
        for other in ("chunked", "fused"):
            r = next(r for r in rows if r["vocab"] == vocab and r["path"] == other)
            print(
                f"V={vocab}: {other}/naive peak = {r['peak_bytes'] / naive['peak_bytes']:.3f}, "
                f"time = {r['seconds'] / naive['seconds']:.3f}, |Δloss| = {abs(r['loss'] - naive['loss']):.2e}, "
                f"|Δ|grad h|| = {abs(r['grad_norm'] - naive['grad_norm']):.2e}"
            )
    return rows


if __name__ == "__main__":
    main()
