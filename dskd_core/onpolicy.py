"""On-policy KD (methods.md §4, DSKD v2): KD terms on the student's own samples, CE on the references.

From epoch `distill.on_policy_start_epoch` (counted from 1), each micro-batch independently, with probability
`distill.on_policy_ratio` (r), gets a second batch under the key "kd": the same prompts (token for token, as the
training batch holds them) followed by a response the student samples (temperature 1, top-p 1, no top-k), with EOS
appended only when the student emitted it. Across vocabularies the sample is decoded to text and re-tokenised
for the teacher after the teacher's own prompt tokens, and the alignment indices the method reads are recomputed
by the data pipeline's aligners, here, outside the loss.

How the two batches reach a distiller: in a step where any micro-batch is on-policy, `TokenCounts.kd_student`
(and `kd_teacher`) count the KD batches of the whole step (the sample, or the reference batch for micro-batches
that stayed off-policy), and every micro-batch's loss is `split_loss`: (1 − kd_rate)·CE(reference batch) ÷ the
step's reference tokens + kd_rate · the distiller's KD terms on the KD batch (the distiller called with
`kd_rate=1.0`, i.e. its KD part alone, divided by the KD token counts). Steps without a sample take the
distiller's ordinary single-batch path.

Randomness: the coin and the sampling seed of micro-batch i of optimizer step s come from a generator seeded with
(training.seed, s, i, rank), and sampling runs in a forked RNG. Nothing needs saving: a resumed run draws the same
coins and samples, and the training's own random stream (dropout) is untouched.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dskd_core import models
from dskd_core.data.encode import IGNORE_INDEX, shifted_labels
from dskd_core.distillers.base import Distiller, LossOutput, TokenCounts
from dskd_core.distillers.common import loss_chunk_rows, step_denominator, student_positions
from dskd_core.fused import Head, fused_sum
from dskd_core.spec import DistillSpec

KD_KEY = "kd"


def on_policy_epoch(distill: DistillSpec, epoch: int) -> bool:
    """Whether micro-batches of `epoch` (0-based) may be on-policy."""
    return distill.on_policy_ratio > 0 and epoch + 1 >= distill.on_policy_start_epoch


def draw(seed: int, step: int, micro: int, rank: int, ratio: float) -> tuple[bool, int]:
    """(heads, sampling seed) of one micro-batch: a pure function of its place in the run (see module doc)."""
    rng = np.random.default_rng([seed, step, micro, rank])
    return bool(rng.random() < ratio), int(rng.integers(0, 2**31 - 1))


def prompt_rows(input_ids: torch.Tensor, labels: torch.Tensor) -> list[list[int]]:
    """Each row's prompt tokens: everything up to and including the position of its first label."""
    rows = []
    for ids, lab in zip(input_ids.tolist(), labels.tolist(), strict=True):
        first = next((t for t, y in enumerate(lab) if y != IGNORE_INDEX), len(lab) - 1)
        rows.append(ids[: first + 1])
    return rows


@torch.no_grad()
def sample_from_ids(
    model: torch.nn.Module,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    pad_id: int,
    eos_id: int,
    seed: int,
) -> list[tuple[list[int], bool]]:
    """(sampled ids without EOS, finished) per prompt: temperature 1, top-p 1, no top-k, in a forked RNG."""
    from transformers import GenerationConfig

    from dskd_core.generation import model_device

    device = model_device(model)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding: every row's next token is predicted at the same column
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        num_beams=1,
        repetition_penalty=1.0,
        pad_token_id=pad_id,
        eos_token_id=[eos_id],
        use_cache=True,
    )
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            out = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
            )
    finally:
        model.train(was_training)
    samples = []
    for row in out[:, width:].tolist():
        end = row.index(eos_id) if eos_id in row else len(row)
        samples.append((row[:end], end < len(row)))
    return samples


class OnPolicySampler:
    """Builds the on-policy KD batch of a training micro-batch (see the module docstring)."""

    def __init__(
        self, spec: Any, student: torch.nn.Module, student_tokenizer: Any, teacher_tokenizer: Any, collate
    ):
        self.distill, self.max_length, self.seed = spec.distill, spec.training.max_length, spec.training.seed
        self.student, self.collate = student, collate
        self.student_tokenizer, self.teacher_tokenizer = student_tokenizer, teacher_tokenizer
        self.pad_id = collate.pad_id
        self.aligners: dict[str, Any] = {}
        if spec.method_info.vocabulary == "cross":
            from dskd_core.data.build import default_aligners
            from dskd_core.distillers.cross import alignments_for

            names = alignments_for(spec.distill.method)
            self.aligners = default_aligners(student_tokenizer, teacher_tokenizer, names)

    def attach(self, micro_batches: list, step: int, rank: int) -> int:
        """Give each `((epoch, consumed), batch)` micro-batch whose coin says so a sampled KD batch under "kd"
        (the position is the one AFTER the batch, as the trainer's stream yields it); returns how many."""
        d, seed, sampled = self.distill, self.seed, 0
        for i, ((epoch, consumed), batch) in enumerate(micro_batches):
            if not on_policy_epoch(d, epoch if consumed > 0 else epoch - 1):
                continue
            heads, sample_seed = draw(seed, step, i, rank, d.on_policy_ratio)
            if heads:
                batch[KD_KEY] = self.sample(batch, sample_seed)
                sampled += 1
        return sampled

    def sample(self, batch: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
        """The KD batch of `batch`: its prompts, then a student sample drawn with `seed`."""
        labels = batch["labels"]
        longest = int((labels != IGNORE_INDEX).sum(-1).max())
        prompts = prompt_rows(batch["input_ids"], labels)
        samples = sample_from_ids(
            self.student,
            prompts,
            max_new_tokens=self.distill.on_policy_max_new_tokens or max(longest, 1),
            pad_id=self.pad_id,
            eos_id=self.student_tokenizer.eos_token_id,
            seed=seed,
        )
        examples = [
            self._side(prompt, ids + ([self.student_tokenizer.eos_token_id] if finished else []))
            for prompt, (ids, finished) in zip(prompts, samples, strict=True)
        ]
        if "teacher_input_ids" in batch:
            tok = self.teacher_tokenizer
            teacher_prompts = prompt_rows(batch["teacher_input_ids"], batch["teacher_labels"])
            for ex, prompt, (ids, finished) in zip(examples, teacher_prompts, samples, strict=True):
                text = self.student_tokenizer.decode(ids, skip_special_tokens=True)
                response = tok(text, add_special_tokens=False)["input_ids"] + (
                    [tok.eos_token_id] if finished else []
                )
                side = self._side(prompt, response)
                ex["teacher_input_ids"], ex["teacher_labels"] = side["input_ids"], side["labels"]
            self._align(examples)
        device = batch["input_ids"].device
        return {k: v.to(device) for k, v in self.collate(examples).items()}

    def _side(self, prompt: list[int], response: list[int]) -> dict[str, list[int]]:
        ids = prompt + response[: max(0, self.max_length - len(prompt))]
        return {"input_ids": ids, "labels": shifted_labels(len(prompt), ids)}

    def _align(self, examples: list[dict[str, list[int]]]) -> None:
        if not self.aligners:
            return

        def padded(key: str) -> np.ndarray:
            rows = [ex[key] for ex in examples]
            out = np.full((len(rows), max(len(r) for r in rows)), IGNORE_INDEX, dtype=np.int64)
            for i, r in enumerate(rows):
                out[i, : len(r)] = r
            return out

        teacher, student = padded("teacher_labels"), padded("labels")
        for name, align in self.aligners.items():
            index = np.asarray(align(teacher, student))
            for row, ex in zip(index, examples, strict=True):
                ex[f"{name}_teacher_index"] = row[: len(ex["labels"])].tolist()


def gold_ce(distiller: Distiller, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Σ CE of the student on the batch's reference labels (chunked like the distillers), and the token count."""
    hidden, labels = student_positions(distiller.student, batch)
    head = models.output_head(distiller.student).weight[: len(distiller.student_tokenizer)]

    if labels.numel() == 0:
        return hidden.float().sum() * 0.0, 0

    def ce(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(z, y, reduction="sum").reshape(1)

    rows = loss_chunk_rows(distiller.spec.distill, head.shape[0])
    ce_sum, _ = fused_sum(ce, [Head(hidden, head)], labels, weights=[1.0], chunk_rows=rows)
    return ce_sum, labels.numel()


def split_loss(
    distiller: Distiller,
    batch: dict[str, torch.Tensor],
    kd_batch: dict[str, torch.Tensor],
    tokens: TokenCounts,
) -> LossOutput:
    """(1 − r)·CE on `batch` ÷ the step's reference tokens + r·KD terms on `kd_batch` ÷ the step's KD tokens."""
    rate = distiller.spec.distill.kd_rate
    kd_tokens = TokenCounts(student=float(tokens.kd_student), teacher=float(tokens.kd_teacher or 0.0))
    kd = distiller(kd_batch, kd_tokens, kd_rate=1.0)
    ce_sum, n = gold_ce(distiller, batch)
    loss = (1.0 - rate) * ce_sum / step_denominator(tokens, n) + rate * kd.loss
    metrics = dict(kd.metrics)
    metrics["sample_ce"] = metrics.pop("ce", 0.0)
    metrics["ce"] = float(ce_sum.detach()) / max(n, 1)
    metrics["loss"] = (1.0 - rate) * metrics["ce"] + rate * metrics.get("kd", 0.0)
    return LossOutput(loss, metrics)
