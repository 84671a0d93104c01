"""Tokenising (prompt, response) pairs into the training format of docs/design.md.

Rules, the same for every tokenizer (and so for both sides of a cross-vocabulary pair):
- the prompt and the response are tokenised separately and concatenated, so the response's tokens do not depend
  on how the prompt ends; no special tokens are added to the response;
- a BOS is put first only if the tokenizer adds one to a plain text (and the prompt text, e.g. a rendered chat
  template, does not already start with it); it never appears in the middle;
- the tokenizer's EOS is appended to the response;
- truncation keeps the response's start: the prompt is cut from the left to `max_prompt_length` tokens (keeping
  its end, and its BOS in front), then the response's tail is cut so the total is at most `max_length`. The EOS
  is the response's last token, so it is kept only when the whole response fits;
- labels are already shifted: `labels[t] = input_ids[t+1]` when that token is a response token (EOS included),
  else -100; the last position is always -100.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

IGNORE_INDEX = -100


class Encoded(TypedDict):
    input_ids: list[int]
    labels: list[int]


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts a BOS in front of a plain text when asked for special tokens."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    with_special = tokenizer("x", add_special_tokens=True)["input_ids"]
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    return with_special[:1] == [bos] and plain[:1] != [bos]


def tokenize_pairs(
    prompt_texts: Sequence[str], response_texts: Sequence[str], tokenizer: Any, *, bos: bool | None = None
) -> list[tuple[list[int], list[int]]]:
    """Untruncated (prompt ids, response ids + EOS) per pair, tokenised as one batch (the Rust tokenizer spreads a
    batch over the cores). `bos` overrides `adds_bos(tokenizer)` (to skip re-probing)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"the tokenizer '{getattr(tokenizer, 'name_or_path', '')}' has no EOS token")
    if not prompt_texts:
        return []
    with_bos = adds_bos(tokenizer) if bos is None else bos
    prompts = tokenizer(list(prompt_texts), add_special_tokens=False)["input_ids"]
    responses = tokenizer(list(response_texts), add_special_tokens=False)["input_ids"]
    pairs = []
    for prompt, response in zip(prompts, responses, strict=True):
        prompt = list(prompt)
        if with_bos and prompt[:1] != [tokenizer.bos_token_id]:
            prompt.insert(0, tokenizer.bos_token_id)
        pairs.append((prompt, [*response, eos]))
    return pairs


def truncate(
    prompt: list[int], response: list[int], *, max_prompt_length: int, max_length: int, bos_id: int | None
) -> tuple[list[int], list[int]]:
    """Keep the prompt's end (and its leading BOS) and the response's start; see the module docstring."""
    if len(prompt) > max_prompt_length:
        keep_bos = bos_id is not None and prompt[:1] == [bos_id] and max_prompt_length > 1
        head = prompt[:1] if keep_bos else []
        tail_len = max_prompt_length - len(head)
        prompt = head + (prompt[-tail_len:] if tail_len > 0 else [])
    room = max(0, max_length - len(prompt))
    return prompt, response[:room]


def shifted_labels(prompt_len: int, input_ids: list[int]) -> list[int]:
    """labels[t] = input_ids[t+1] for response tokens (positions prompt_len.. of input_ids), else -100."""
    labels = [IGNORE_INDEX] * len(input_ids)
    for t in range(max(prompt_len - 1, 0), len(input_ids) - 1):
        labels[t] = input_ids[t + 1]
    return labels


def encode_example(
    prompt_text: str,
    response_text: str,
    tokenizer: Any,
    *,
    max_prompt_length: int,
    max_length: int,
    bos: bool | None = None,
) -> Encoded | None:
    """Token ids and shifted labels of one example, or None when truncation leaves no response label.

    `bos`: whether to put a BOS first (default: probe the tokenizer with `adds_bos`; pass it to skip the probe).
    """
    [example] = encode_examples(
        [prompt_text],
        [response_text],
        tokenizer,
        max_prompt_length=max_prompt_length,
        max_length=max_length,
        bos=bos,
    )
    return example


def encode_examples(
    prompt_texts: Sequence[str],
    response_texts: Sequence[str],
    tokenizer: Any,
    *,
    max_prompt_length: int,
    max_length: int,
    bos: bool | None = None,
) -> list[Encoded | None]:
    """`encode_example` over many pairs, tokenised in one batch."""
    out: list[Encoded | None] = []
    for prompt, response in tokenize_pairs(prompt_texts, response_texts, tokenizer, bos=bos):
        prompt, response = truncate(
            prompt,
            response,
            max_prompt_length=max_prompt_length,
            max_length=max_length,
            bos_id=tokenizer.bos_token_id,
        )
        input_ids = prompt + response
        labels = shifted_labels(len(prompt), input_ids)
        has_label = any(label != IGNORE_INDEX for label in labels)
        out.append({"input_ids": input_ids, "labels": labels} if has_label else None)
    return out


def response_span(labels: list[int]) -> tuple[int, list[int]]:
    """(first label position, the label tokens) of an encoded example; labels form one contiguous span."""
    start = next((t for t, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
    return start, [label for label in labels[start:] if label != IGNORE_INDEX]
