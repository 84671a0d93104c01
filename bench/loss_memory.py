"""Process peak memory and time of the training loss with default settings, against the published dense loss.

    .venv/bin/python bench/loss_memory.py            # N=2048 positions, d=256, V = 32,000 and 151,936
    .venv/bin/python bench/loss_memory.py --quick    # tiny smoke run (seconds)

Variants (each the loss and its backward pass from hidden states already computed, N positions):
  dense        the published formulation: full [N, V] logits of both models, log-softmax of both, the KL
               (forward KL at τ) and the CE, forward + backward (written out here, not the project's code)
  vanilla_kd   the `vanilla_kd` distiller's forward with the default spec (fkl)
  dskd         the `dskd` distiller's forward with the default spec (fkl, v2, ideal projectors)
  dskd_eta     the `dskd_eta` distiller's forward, default spec (cross-vocabulary: the teacher's vocabulary is
               5% larger, its first V ids map to the student's, every position aligned)
On request (--variants NAME … / --before):
  uld          the `uld` distiller's forward, default spec (cross-vocabulary, the same pair as dskd_eta)
  dense_dskd   DSKD's own published form: the four [N, V] logit tensors (student, teacher, the two projected
               heads) in full, log-softmaxes of each, forward + backward (about 2.5× dense's memory)
  before       the previous default: CE + FKL under activation checkpointing, 1024 rows per chunk
The distillers run on stand-in models that return fixed hidden states (`_lm`): what is measured is the loss
from the last hidden states on, the part whose memory grows with the vocabulary.

Each variant runs in a fresh subprocess: it builds its inputs first (hidden states, heads, labels, the
distiller), then resets the kernel's peak-RSS mark (`/proc/self/clear_refs`) and reads `VmHWM` after the runs:
peak = the highest resident memory during the runs minus the resident memory before them, so it counts every
byte the process touched (torch tensors, allocator slack, library buffers), the same way for every variant.
Time = median wall time of the timed runs after the first, and the process CPU time of the same runs (one
torch thread: on a loaded machine the CPU time still measures the work, where the wall time also measures the
other processes). Ratios are to `dense` at the same vocabulary, from this one invocation. Each result is also appended to `--log` as a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = ("dense", "vanilla_kd", "dskd", "dskd_eta")
EXTRA = ("uld", "dense_dskd", "before")  # asked for by name (--variants) or flag (--before)
CROSS = ("dskd_eta", "uld")


# ---- child: one variant in its own process ----------------------------------------------------------------------
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux ≥ 4.0: VmHWM := current RSS


class _Vocab:
    """A tokenizer stand-in: the distillers read only its length (and compare it with itself)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


def _lm(vocab: int, hidden, seed: int, trainable: bool):
    """A stand-in causal LM whose last hidden state is the given `[1, N, d]` tensor, with an LM head.

    The distillers read a model through `base_model(...).last_hidden_state` and `get_output_embeddings()` only,
    so the step runs their own `forward` from the hidden states on.
    """
    import torch
    from torch import nn

    d = hidden.shape[-1]

    class Backbone(nn.Module):
        def forward(self, **_inputs) -> SimpleNamespace:
            return SimpleNamespace(last_hidden_state=hidden)

    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base_model_ = Backbone()
            self.lm_head = nn.Linear(d, vocab, bias=False)
            g = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                self.lm_head.weight.copy_(torch.randn(vocab, d, generator=g) / d**0.5)
            self.lm_head.weight.requires_grad_(trainable)

        @property
        def base_model(self) -> nn.Module:
            return self.base_model_

        def get_output_embeddings(self) -> nn.Module:
            return self.lm_head

    return LM()


def _setup(variant: str, n: int, d: int, vocab: int, budget: int | None):
    """Everything the step needs, built before the measurement; returns (step, tensors to clear grads of)."""
    import torch
    import torch.nn.functional as F

    from dskd_core.distillers import DistillContext, TokenCounts, get_distiller_class
    from dskd_core.reduce import kd_loss_from_hidden, safe_div
    from dskd_core.spec import JobSpec

    g = torch.Generator().manual_seed(1)
    teacher_vocab = vocab + vocab // 20 if variant in CROSS else vocab
    h_s_batch = torch.randn(1, n, d, generator=g).requires_grad_()
    h_t_batch = torch.randn(1, n, d, generator=g)
    h_s, h_t = h_s_batch[0], h_t_batch[0]
    student, teacher = _lm(vocab, h_s_batch, 2, True), _lm(teacher_vocab, h_t_batch, 3, False)
    w_s, w_t = student.lm_head.weight, teacher.lm_head.weight
    labels = torch.randint(0, vocab, (n,), generator=g)
    spec = JobSpec.model_validate(
        {
            "student": {"name_or_path": "bench-student"},
            "teacher": {"name_or_path": "bench-teacher"},
            "data": {"path": "bench.jsonl"},
            "distill": {
                "method": {"dense": "sft", "before": "sft", "dense_dskd": "dskd"}.get(variant, variant),
                **({"loss_chunk_elements": budget} if budget else {}),
            },
        }
    )
    dist = spec.distill
    tokens = TokenCounts(student=float(n), teacher=float(n))
    leaves = [h_s_batch, w_s]

    if variant == "dense":

        def step() -> torch.Tensor:
            z_s = h_s @ w_s.T
            with torch.no_grad():  # the teacher's side is a constant, as in the published code
                log_p = torch.log_softmax((h_t @ w_t.T) / dist.temperature, -1)
                p = log_p.exp()
            log_q = torch.log_softmax(z_s / dist.temperature, -1)
            kd = (p * (log_p - log_q)).sum(-1).mean()
            loss = (1 - dist.kd_rate) * F.cross_entropy(z_s, labels) + dist.kd_rate * kd
            loss.backward()
            return loss.detach()

        return step, leaves

    if variant == "before":

        def step() -> torch.Tensor:
            sums = kd_loss_from_hidden(
                h_s, w_s, labels, h_t, w_t, temperature=dist.temperature, chunk_size=1024
            )
            loss = (1 - dist.kd_rate) * safe_div(sums[0], sums[2]) + dist.kd_rate * safe_div(sums[1], sums[2])
            loss.backward()
            return loss.detach()

        return step, leaves

    vocab_tok = _Vocab(vocab)
    teacher_tok = vocab_tok if teacher_vocab == vocab else _Vocab(teacher_vocab)
    vocab_map = torch.arange(teacher_vocab).where(torch.arange(teacher_vocab) < vocab, -1)
    ctx = DistillContext(spec, student, teacher, vocab_tok, teacher_tok, vocab_map=vocab_map)
    distiller = get_distiller_class(dist.method)(ctx)

    ids = torch.zeros(1, n, dtype=torch.long)  # never read: the stand-in models return the hidden states
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels[None]}
    # Cross-vocabulary: the same positions on the teacher's side, each aligned with its student position.
    batch |= {
        "teacher_input_ids": ids,
        "teacher_attention_mask": torch.ones_like(ids),
        "teacher_labels": torch.randint(0, teacher_vocab, (1, n), generator=g),
        "eta_teacher_index": torch.arange(n)[None],
    }

    def step() -> torch.Tensor:
        loss = distiller(batch, tokens).loss
        loss.backward()
        return loss.detach()

    if variant == "dense_dskd":

        def step() -> torch.Tensor:
            """DSKD v2 with ideal projectors, dense: all four [N, V] logit tensors, full log-softmaxes."""

            def fkl(z_q: torch.Tensor, z_p: torch.Tensor) -> torch.Tensor:
                log_p = torch.log_softmax(z_p / dist.temperature, -1)
                log_q = torch.log_softmax(z_q / dist.temperature, -1)
                return (log_p.exp() * (log_p - log_q)).sum(-1)

            z_s = h_s @ w_s.T
            with torch.no_grad():
                z_t = h_t @ w_t.T
            z_t2s = distiller.t2s(h_t) @ w_s.detach().T
            z_s2t = distiller._s2t_map()(h_s) @ w_t.T
            teacher_top = z_t.argmax(-1)
            agree = z_t2s.detach().argmax(-1) == teacher_top
            kd = (fkl(z_s, z_t2s.detach()) * agree).mean() + fkl(z_s2t, z_t).mean()
            kd = kd + F.cross_entropy(z_t2s, teacher_top)
            loss = (1 - dist.kd_rate) * F.cross_entropy(z_s, labels) + dist.kd_rate * kd
            loss.backward()
            return loss.detach()

    return step, leaves + [p for p in distiller.parameters() if p.requires_grad]


def child(args: argparse.Namespace) -> dict[str, Any]:
    import gc

    import torch

    from dskd_core import fused

    torch.set_num_threads(args.threads)
    if args.block_elements:
        fused.BLOCK_ELEMENTS = args.block_elements
    variant, n, d, vocab, repeats = args.child, args.n, args.d, args.vocab[0], args.repeats
    step, leaves = _setup(variant, n, d, vocab, args.budget)
    gc.collect()
    rss_before = _status_kib("VmRSS") * 1024
    _reset_peak()
    times, cpu_times, loss = [], [], None
    for _ in range(1 + repeats):
        for t in leaves:
            t.grad = None
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    peak = _status_kib("VmHWM") * 1024 - rss_before
    return {
        "variant": variant,
        "vocab": vocab,
        "n": n,
        "d": d,
        "threads": torch.get_num_threads(),
        "budget": args.budget,
        "block_elements": fused.BLOCK_ELEMENTS,
        "peak_bytes": peak,
        "seconds": statistics.median(times[1:]) if repeats else times[0],
        "first_seconds": times[0],
        "cpu_seconds": statistics.median(cpu_times[1:]) if repeats else cpu_times[0],
        "loss": float(loss),
        "grad_norm": float(leaves[0].grad.norm()),
    }


# ---- parent: one subprocess per variant, ratios to dense --------------------------------------------------------
def _mem_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


def _need_gib(variant: str, n: int, vocab: int) -> float:
    """Free memory a variant needs: about its peak plus a margin (the dense forms hold many [N, V] tensors)."""
    tensors = {"dense": 9, "dense_dskd": 20}.get(variant, 2)
    return tensors * n * vocab * 4 / 2**30


def run_variant(args: argparse.Namespace, variant: str, vocab: int) -> dict[str, Any]:
    need = _need_gib(variant, args.n, vocab)
    deadline = time.time() + args.wait_minutes * 60
    while _mem_available_gib() < need:
        if time.time() > deadline:
            return {"variant": variant, "vocab": vocab, "skipped": f"less than {need:.1f} GiB available"}
        time.sleep(30)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, __file__, "--child", variant, "--vocab", str(vocab), "--n", str(args.n)]
    cmd += ["--d", str(args.d), "--repeats", str(args.repeats), "--threads", str(args.threads)]
    cmd += ["--budget", str(args.budget)] * bool(args.budget)
    cmd += ["--block-elements", str(args.block_elements)] * bool(args.block_elements)
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} at V={vocab} failed:\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["load_before"] = load
    row["load_after"] = os.getloadavg()[0]
    return row


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of a few seconds")
    ap.add_argument("--n", type=int, default=2048, help="valid positions in the step")
    ap.add_argument("--d", type=int, default=256, help="hidden size (both models)")
    ap.add_argument("--vocab", type=int, nargs="+", default=[32000, 151936])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=[*VARIANTS, *EXTRA])
    ap.add_argument("--before", action="store_true", help="also measure the previous default path")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs after the first")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each subprocess")
    ap.add_argument("--budget", type=int, help="loss_chunk_elements for the distillers (default: the spec's)")
    ap.add_argument("--block-elements", type=int, help="fused.BLOCK_ELEMENTS (default: the module's)")
    ap.add_argument("--wait-minutes", type=float, default=10.0, help="wait this long for free memory")
    ap.add_argument("--log", type=Path, default=ROOT / "bench" / "out" / "loss_memory.jsonl")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return []
    if args.quick:
        args.n, args.d, args.vocab, args.repeats = 256, 32, [4000], 1
    # dense first: the others' ratios are to it (left out only when --variants leaves it out)
    variants = sorted(
        set(args.variants) | ({"before"} if args.before else set()), key=[*VARIANTS, *EXTRA].index
    )

    from dskd_core import fused
    from dskd_core.reduce import chunk_rows
    from dskd_core.spec import DEFAULT_CHUNK_ELEMENTS

    budget = args.budget or DEFAULT_CHUNK_ELEMENTS
    print(
        f"N={args.n} d={args.d}, {args.threads} torch thread(s) per subprocess; loss element budget {budget}"
        f"{'' if args.budget else ' (default)'}, block {args.block_elements or fused.BLOCK_ELEMENTS} elements; "
        "rows per chunk, one head pair: "
        + ", ".join(f"V={v}: {chunk_rows(v, v, budget=budget)}" for v in args.vocab)
    )
    print(
        f"{'variant':11} {'V':>7} {'peak GiB':>9} {'wall s':>7} {'cpu s':>7} {'peak/dense':>10} "
        f"{'wall/dense':>10} {'cpu/dense':>9} {'loss':>8} {'load avg':>9}"
    )
    rows: list[dict[str, Any]] = []
    args.log.parent.mkdir(parents=True, exist_ok=True)
    for vocab in args.vocab:
        dense = None
        for variant in variants:
            row = run_variant(args, variant, vocab)
            rows.append(row)
            with args.log.open("a") as fh:
                fh.write(json.dumps({**row, "time": time.time()}) + "\n")
            if "skipped" in row:
                print(f"{variant:11} {vocab:7d} skipped: {row['skipped']}")
                continue
            dense = row if variant == "dense" else dense
            for key, name in (
                ("peak_bytes", "peak_ratio"),
                ("seconds", "time_ratio"),
                ("cpu_seconds", "cpu_ratio"),
            ):
                row[name] = row[key] / dense[key] if dense else float("nan")
            print(
                f"{variant:11} {vocab:7d} {row['peak_bytes'] / 2**30:9.3f} {row['seconds']:7.1f} "
                f"{row['cpu_seconds']:7.1f} {row['peak_ratio']:10.3f} {row['time_ratio']:10.3f} "
                f"{row['cpu_ratio']:9.3f} {row['loss']:8.4f} {row['load_before']:4.1f}/{row['load_after']:4.1f}",
                flush=True,
            )
    _print_targets(rows)
    return rows


def _print_targets(rows: list[dict[str, Any]]) -> None:
    """The issue's targets (peak ≤ 0.2×, wall time ≤ 1.0× the dense loss at the largest vocabulary), and DSKD
    against its own dense form where both ran."""
    measured = [r for r in rows if "skipped" not in r]
    top = max((r["vocab"] for r in measured), default=None)
    for r in measured:
        if (
            r["vocab"] == top
            and r["variant"] not in ("dense", "dense_dskd")
            and r["peak_ratio"] == r["peak_ratio"]
        ):
            ok = r["peak_ratio"] <= 0.2 and r["time_ratio"] <= 1.0
            print(
                f"target at V={top} (peak ≤ 0.2×, wall time ≤ 1.0× dense): {r['variant']:10} peak "
                f"{r['peak_ratio']:.3f}×, wall {r['time_ratio']:.3f}× (cpu {r['cpu_ratio']:.3f}×): "
                f"{'met' if ok else 'MISSED'}"
            )
    for vocab in sorted({r["vocab"] for r in measured}):
        by = {r["variant"]: r for r in measured if r["vocab"] == vocab}
        if "dskd" in by and "dense_dskd" in by:
            own, ref = by["dskd"], by["dense_dskd"]
            print(
                f"V={vocab}: dskd / dense_dskd: peak {own['peak_bytes'] / ref['peak_bytes']:.3f}×, wall "
                f"{own['seconds'] / ref['seconds']:.3f}×, cpu {own['cpu_seconds'] / ref['cpu_seconds']:.3f}×"
            )


if __name__ == "__main__":
    main()
