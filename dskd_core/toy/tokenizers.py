"""The toy world's two tokenizer families, trained in code with the `tokenizers` library.

- byte-level BPE (GPT-2 family): bytes mapped to printable characters, spaces shown as `Ġ`, no BOS added;
- SentencePiece-style BPE (Llama family): metaspace `▁`, byte fallback to the 256 `<0xNN>` tokens for characters
  outside its alphabet, BOS added in front of every encoded text.

Both split digits one by one (as Llama does) and get the same tiny chat template, which renders a user turn as
its text plus a newline: the toy world's training format, so prompt_template "chat" and "{prompt}\\n" agree.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

# A user/system turn is its text and a newline; an assistant turn is its text and EOS.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}"
    "{% else %}{{ message['content'] }}\n{% endif %}"
    "{% endfor %}"
)
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """GPT-2-style byte-level BPE; `<|endoftext|>` is BOS, EOS and UNK, `<|pad|>` pads."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is ever unknown
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return _wrap(tok, bos="<|endoftext|>", eos="<|endoftext|>", unk="<|endoftext|>", pad="<|pad|>")


def train_sentencepiece_bpe(
    texts: Iterable[str], vocab_size: int, alphabet_size: int = 80
) -> PreTrainedTokenizerFast:
    """Llama-style BPE over metaspace pieces with byte fallback.

    Ids 0-3 are `<unk> <s> </s> <pad>`, 4-259 the byte tokens, then the learned pieces. `alphabet_size` keeps
    only the most frequent characters, so rare ones (emoji, some accents) are spelled as `<0xNN>` bytes.
    """
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    draft = Tokenizer(models.BPE(unk_token="<unk>"))
    # Spaces become ▁ and one ▁ is prepended (Llama-2 style) in the normalizer, so runs of leading spaces survive.
    draft.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    draft.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(BYTE_TOKENS),
        special_tokens=specials,
        limit_alphabet=alphabet_size,
        show_progress=False,
    )
    draft.train_from_iterator(texts, trainer)
    # The trainer cannot seed a vocabulary with byte tokens, so rebuild the model with them placed after the specials.
    learned = json.loads(draft.to_str())["model"]
    pieces = sorted((i, p) for p, i in learned["vocab"].items() if p not in specials)
    vocab = {p: i for i, p in enumerate(specials + BYTE_TOKENS + [p for _, p in pieces])}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tok.normalizer = draft.normalizer
    tok.pre_tokenizer = draft.pre_tokenizer
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return _wrap(tok, bos="<s>", eos="</s>", unk="<unk>", pad="<pad>")


def _wrap(tok: Tokenizer, *, bos: str, eos: str, unk: str, pad: str) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        pad_token=pad,
        clean_up_tokenization_spaces=False,
        model_max_length=1024,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: Path) -> None:
    tokenizer.save_pretrained(str(out_dir))
