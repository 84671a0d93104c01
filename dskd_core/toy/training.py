"""A compact, seeded cross-entropy loop that pretrains the toy models and instruction-tunes the teacher, and the
checks that tell whether they learned.

Batches follow the engine's convention (docs/design.md): labels are already shifted, `labels[b, t]` is the token
position `t` predicts when that token belongs to the response (EOS included), else -100.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dskd_core.toy.tasks import Record, exact_match

# The training format of the toy world: a prompt, a newline, the response, EOS (what the chat template renders).
PROMPT_TEMPLATE = "{prompt}\n"


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    prompt_len: int  # tokens before the first response token


def encode(record: Record, tokenizer) -> Encoded:
    """Prompt (with the tokenizer's own BOS, if it adds one) then response then EOS."""
    prompt = tokenizer(PROMPT_TEMPLATE.format(prompt=record["prompt"]), add_special_tokens=True)["input_ids"]
    response = tokenizer(record["response"], add_special_tokens=False)["input_ids"]
    return Encoded(prompt + response + [tokenizer.eos_token_id], len(prompt))


def encode_text(text: str, tokenizer, max_tokens: int = 128) -> Encoded:
    """A pretraining document: BOS, the text, EOS; every token after BOS is a target (cut to `max_tokens`)."""
    ids = [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]
    return Encoded([*ids[: max_tokens - 1], tokenizer.eos_token_id], 1)


def collate(batch: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.ids) for e in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for b, e in enumerate(batch):
        n = len(e.ids)
        input_ids[b, :n] = torch.tensor(e.ids)
        attention_mask[b, :n] = 1
        # Position t predicts token t+1; only response tokens (from prompt_len on) are targets.
        labels[b, e.prompt_len - 1 : n - 1] = torch.tensor(e.ids[e.prompt_len :])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def response_loss_sums(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the response tokens of a batch, and their count."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = F.cross_entropy(
        logits.flatten(0, 1).float(), batch["labels"].flatten(), reduction="sum", ignore_index=-100
    )
    return loss, int((batch["labels"] != -100).sum())


@torch.no_grad()
def mean_response_loss(model: nn.Module, data: Sequence[Encoded], pad_id: int, batch_size: int = 64) -> float:
    """Mean cross-entropy per target token (responses, or whole documents for `encode_text`); exp() is perplexity."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(data), batch_size):
        loss, n = response_loss_sums(model, collate(data[start : start + batch_size], pad_id))
        total, count = total + float(loss), count + n
    model.train(was_training)
    return total / max(count, 1)


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    weight_decay: float = 0.01
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to `min_lr_ratio * lr` at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_causal_lm(
    model: nn.Module,
    train: Sequence[Encoded],
    cfg: TrainConfig,
    *,
    pad_id: int,
    seed: int,
    log: Callable[[int, float, float], None] | None = None,
    log_every: int = 50,
) -> float:
    """Train in place with AdamW on response-token CE; returns the mean train loss of the last `log_every` steps.

    Deterministic on CPU: the batch order comes from a seeded `random.Random`, the model is seeded by the caller,
    and no op used here is nondeterministic.
    """
    rng = random.Random(seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    batches: list[list[int]] = []
    recent: list[float] = []
    model.train()
    started = time.perf_counter()
    for step in range(cfg.steps):
        if not batches:
            batches = _epoch_batches(train, cfg.batch_size, rng)
        batch_idx = batches.pop()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss_sum, n_tokens = response_loss_sums(model, collate([train[i] for i in batch_idx], pad_id))
        loss = loss_sum / max(n_tokens, 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        recent = [*recent[-(log_every - 1) :], loss.item()]
        if log is not None and ((step + 1) % log_every == 0 or step + 1 == cfg.steps):
            log(step + 1, sum(recent) / len(recent), time.perf_counter() - started)
    model.eval()
    return sum(recent) / max(len(recent), 1)


def _epoch_batches(data: Sequence[Encoded], batch_size: int, rng: random.Random) -> list[list[int]]:
    """One shuffled epoch of index batches (not length-bucketed: that makes batches single-task and slows learning)."""
    order = list(range(len(data)))
    rng.shuffle(order)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)][::-1]


@torch.no_grad()
def greedy_answer(model: nn.Module, tokenizer, prompt: str, max_new_tokens: int = 48) -> str:
    """Greedy decoding of one response in the toy world's format (stops at EOS)."""
    ids = tokenizer(PROMPT_TEMPLATE.format(prompt=prompt), return_tensors="pt", add_special_tokens=True)[
        "input_ids"
    ]
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def exact_match_rate(model: nn.Module, tokenizer, records: Sequence[Record]) -> dict[str, float]:
    """Share of greedy answers equal to one of the references, overall and per task."""
    hits: dict[str, list[bool]] = {}
    for record in records:
        ok = exact_match(greedy_answer(model, tokenizer, record["prompt"]), record["references"])
        hits.setdefault(record["task"], []).append(ok)
    rates = {task: sum(v) / len(v) for task, v in sorted(hits.items())}
    rates["all"] = sum(sum(v) for v in hits.values()) / max(1, sum(len(v) for v in hits.values()))
    return rates
