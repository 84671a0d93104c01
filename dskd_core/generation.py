"""Batched generation for evaluation and on-policy distillation, for any causal-LM family.

Prompts are left-padded so that every row's last prompt token sits at the same column and the first new
token of every row is predicted from it. Position ids follow the attention mask: transformers 5's `generate`
builds them as `cumsum(attention_mask) - 1` for every model whose `forward` takes `position_ids` (GPT-2,
Llama, Qwen, ...), so a left-padded row sees the same positions as the same prompt alone; the tests check
that batched greedy output equals one-by-one output for a GPT-2 and a Llama model.

The model keeps its own dtype and device: a bf16 model is never cast to fp16 (methods.md §6).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Generation:
    """One sampled response: its token ids (EOS and padding removed), its text, and why it stopped."""

    token_ids: list[int]
    text: str
    # True when the model emitted EOS; False when max_new_tokens cut it off (on-policy KD appends EOS only if True).
    finished: bool


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (where its inputs must go)."""
    return next(model.parameters()).device


def _pad_and_eos_ids(tokenizer) -> tuple[int, list[int]]:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token: generation could never stop early")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return pad, [eos]


def _left_pad(
    rows: Sequence[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def encode_prompts(
    tokenizer, prompts: Sequence[str], *, max_prompt_tokens: int | None = None
) -> list[list[int]]:
    """Prompt token ids exactly as the training data encodes prompts (dskd_core.data.encode).

    No special tokens but a single leading BOS for tokenizers that add one (none if the text, e.g. a rendered
    chat template, already starts with it); truncation keeps the prompt's end and its BOS.
    """
    from dskd_core.data.encode import adds_bos, truncate

    bos_id = tokenizer.bos_token_id
    with_bos = adds_bos(tokenizer)
    rows: list[list[int]] = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    encoded = []
    for row in rows:
        row = list(row)
        if with_bos and row[:1] != [bos_id]:
            row.insert(0, bos_id)
        if max_prompt_tokens is not None:
            row, _ = truncate(
                row, [], max_prompt_length=max_prompt_tokens, max_length=len(row) + 1, bos_id=bos_id
            )
        encoded.append(row)
    return encoded


def _generation_config(
    *,
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_p: float,
    top_k: int,
    no_repeat_ngram_size: int,
    pad_id: int,
    eos_ids: list[int],
):
    from transformers import GenerationConfig

    # Explicit neutral values so a checkpoint's own generation_config (e.g. a hub repetition_penalty) cannot
    # silently change the evaluation protocol.
    params: dict = dict(
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,
        do_sample=do_sample,
        num_beams=1,
        repetition_penalty=1.0,
        no_repeat_ngram_size=no_repeat_ngram_size,
        pad_token_id=pad_id,
        eos_token_id=eos_ids,
        use_cache=True,
    )
    if do_sample:
        # top_k=0 disables top-k filtering: the reference recipe samples from the full distribution.
        params.update(temperature=temperature, top_p=top_p, top_k=top_k)
    return GenerationConfig(**params)


def _cut_at_eos(row: list[int], eos_ids: list[int]) -> tuple[list[int], bool]:
    for j, tok in enumerate(row):
        if tok in eos_ids:
            return row[:j], True
    return row, False


@torch.no_grad()
def generate_ids(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    no_repeat_ngram_size: int = 0,
    seed: int | None = None,
    batch_size: int = 16,
    max_prompt_tokens: int | None = None,
) -> list[Generation]:
    """Generate a response for every prompt (already formatted text); results are in the prompts' order.

    Prompts are tokenised as the training data tokenises them (`encode_prompts`), truncated from the left to
    `max_prompt_tokens` when set, sorted by length into batches of `batch_size` (less padding), and
    decoded with a KV cache until EOS or `max_new_tokens`. With `seed`, sampling draws from a forked RNG
    seeded with it, so the call is reproducible and leaves the caller's RNG state untouched; outputs depend on
    the seed, the batch size and the prompt set (one RNG stream runs through the batches).
    """
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if not prompts:
        return []
    device = model_device(model)
    pad_id, eos_ids = _pad_and_eos_ids(tokenizer)
    encoded = encode_prompts(tokenizer, prompts, max_prompt_tokens=max_prompt_tokens)
    if any(len(row) == 0 for row in encoded):
        raise ValueError("a prompt tokenises to no tokens at all; nothing to condition the response on")
    config = _generation_config(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        no_repeat_ngram_size=no_repeat_ngram_size,
        pad_id=pad_id,
        eos_ids=eos_ids,
    )
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results: list[Generation | None] = [None] * len(encoded)
    was_training = model.training
    model.eval()  # dropout off while generating, restored below for a student mid-training
    fork_devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=fork_devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            for start in range(0, len(order), batch_size):
                batch_index = order[start : start + batch_size]
                input_ids, attention_mask = _left_pad([encoded[i] for i in batch_index], pad_id, device)
                output = model.generate(
                    input_ids=input_ids, attention_mask=attention_mask, generation_config=config
                )
                new_tokens = output[:, input_ids.shape[1] :].tolist()
                for i, row in zip(batch_index, new_tokens, strict=True):
                    ids, finished = _cut_at_eos(row, eos_ids)
                    text = tokenizer.decode(ids, skip_special_tokens=True)
                    results[i] = Generation(token_ids=ids, text=text, finished=finished)
    finally:
        model.train(was_training)
    return [r for r in results if r is not None]


def generate_batch(model: nn.Module, tokenizer, prompts: Sequence[str], **options: Any) -> list[str]:
    """The response texts (prompt removed, special tokens skipped) of `generate_ids`, which takes the same options."""
    return [g.text for g in generate_ids(model, tokenizer, prompts, **options)]
