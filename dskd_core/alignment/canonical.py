"""Canonical token bytes: the raw bytes each token of a tokenizer stands for, whatever its family's spelling.

Byte-level BPE (GPT-2, Qwen, Llama 3) spells every byte as one printable code point (`Ġ` = space, `Ċ` = newline,
`Ã©` = the two UTF-8 bytes of é); SentencePiece (Llama 2, Mistral, TinyLlama) writes a space as `▁` and falls back
to byte tokens `<0xNN>`. Both are decoded here to raw bytes, so tokens of two different tokenizers can be compared.

Special tokens (EOS, BOS, PAD, UNK, added special tokens) have no bytes (`None`): they must never compare equal to
text. Their role ("eos", "bos", "pad", "unk" or "special:<content>") is kept in `TokenTable.roles` instead, so the
alignment and the vocabulary map can pair them explicitly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

SPACE = 0x20
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
ROLE_ATTRS = ("eos", "bos", "pad", "unk")  # priority order when one id holds several roles


class Convention(StrEnum):
    BYTE_LEVEL = "byte_level"
    SENTENCEPIECE = "sentencepiece"
    PLAIN = "plain"  # token strings are literal text (no space marker, no byte alphabet)


def gpt2_bytes_to_unicode() -> dict[int, str]:
    """The byte-level BPE alphabet: printable Latin-1 bytes stand for themselves, the rest for 256 + n."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    keep = set(printable)
    table: dict[int, str] = {}
    shifted = 0
    for byte in range(256):
        if byte in keep:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return table


UNICODE_TO_BYTE: dict[str, int] = {char: byte for byte, char in gpt2_bytes_to_unicode().items()}


def _backend_json(tokenizer: Any) -> dict[str, Any]:
    return json.loads(tokenizer.backend_tokenizer.to_str())


def _component_types(node: Any) -> tuple[set[str], list[tuple[str, str]]]:
    """All `type` names inside a pre-tokenizer/decoder/normalizer tree, and its Replace (pattern, content) pairs."""
    types: set[str] = set()
    replaces: list[tuple[str, str]] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            kind = item.get("type")
            if isinstance(kind, str):
                types.add(kind)
                if kind == "Replace":
                    pattern = item.get("pattern", {})
                    text = pattern.get("String") or pattern.get("Regex") or ""
                    replaces.append((str(text), str(item.get("content", ""))))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return types, replaces


def detect_convention(spec: dict[str, Any], vocab: dict[str, int] | None = None) -> Convention:
    """Read the convention from the backend tokenizer's pre-tokenizer/decoder/normaliser; fall back on the vocabulary."""
    types, replaces = set(), []
    for key in ("pre_tokenizer", "decoder"):
        t, r = _component_types(spec.get(key))
        types |= t
        replaces += r
    if "ByteLevel" in types:
        return Convention.BYTE_LEVEL
    _norm_types, norm_replaces = _component_types(spec.get("normalizer"))
    if {"Metaspace", "ByteFallback"} & types or any("▁" in p + c for p, c in replaces + norm_replaces):
        return Convention.SENTENCEPIECE
    if spec.get("model", {}).get("byte_fallback"):
        return Convention.SENTENCEPIECE
    # Heuristic for hand-made tokenizers without a telling pre-tokenizer or decoder.
    vocab = vocab or {}
    metaspace = sum(token.startswith("▁") for token in vocab)
    byte_level = sum(token.startswith("Ġ") for token in vocab)
    if metaspace > byte_level:
        return Convention.SENTENCEPIECE
    if byte_level > 0:
        return Convention.BYTE_LEVEL
    return Convention.PLAIN


def vocab_token_bytes(token: str, convention: Convention) -> bytes:
    """Bytes of one model-vocabulary token string (not an added token) under a convention."""
    if convention is Convention.BYTE_LEVEL:
        # A code point outside the byte alphabet (never in a well-formed vocab) stands for its own UTF-8.
        out = bytearray()
        for char in token:
            byte = UNICODE_TO_BYTE.get(char)
            if byte is None:
                out += char.encode("utf-8")
            else:
                out.append(byte)
        return bytes(out)
    if convention is Convention.SENTENCEPIECE:
        match = _BYTE_TOKEN.match(token)
        if match:
            return bytes([int(match.group(1), 16)])
        return token.replace("▁", " ").encode("utf-8")
    return token.encode("utf-8")


@dataclass(frozen=True)
class TokenTable:
    """Everything the alignment needs to know about one tokenizer, computed once per tokenizer."""

    convention: Convention
    token_bytes: tuple[bytes | None, ...]  # canonical bytes per id; None = special token (or unused id)
    roles: dict[int, str]  # special token id -> "eos" | "bos" | "pad" | "unk" | "special:<content>"
    role_ids: dict[str, int]  # "eos"/"bos"/"pad"/"unk" -> id, as the tokenizer declares them (ids may repeat)
    byte_fallback: np.ndarray  # bool [V]: the id is a SentencePiece <0xNN> byte token
    fingerprint: str  # hash of the whole tokenizer (cache key)
    signature: (
        str  # hash of what decides tokenisation: model, normaliser, pre-tokenizer, added/special tokens
    )

    @property
    def size(self) -> int:
        return len(self.token_bytes)


def _special_roles(tokenizer: Any, added: dict[int, Any], convention: Convention) -> dict[int, str]:
    roles: dict[int, str] = {}
    for attr in ROLE_ATTRS:
        token_id = getattr(tokenizer, f"{attr}_token_id", None)
        if isinstance(token_id, int) and token_id not in roles:
            roles[token_id] = attr
    specials = set(getattr(tokenizer, "all_special_ids", []) or [])
    specials |= {i for i, tok in added.items() if getattr(tok, "special", False)}
    for token_id in sorted(specials - roles.keys()):
        content = (
            str(added[token_id].content) if token_id in added else tokenizer.convert_ids_to_tokens(token_id)
        )
        # Trainers often register SentencePiece byte tokens as added specials: they are bytes, not markers.
        if convention is Convention.SENTENCEPIECE and _BYTE_TOKEN.match(content):
            continue
        roles[token_id] = f"special:{content}"
    return roles


def _build_table(tokenizer: Any, fingerprint: str) -> TokenTable:
    spec = _backend_json(tokenizer)
    backend = tokenizer.backend_tokenizer
    vocab_with_added: dict[str, int] = backend.get_vocab(with_added_tokens=True)
    model_vocab: dict[str, int] = backend.get_vocab(with_added_tokens=False)
    convention = detect_convention(spec, model_vocab)
    added = dict(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    roles = _special_roles(tokenizer, added, convention)
    size = max(len(tokenizer), max(vocab_with_added.values(), default=-1) + 1)
    token_bytes: list[bytes | None] = [None] * size
    byte_fallback = np.zeros(size, dtype=bool)
    for token, token_id in vocab_with_added.items():
        if token_id in roles:
            continue
        if token_id in added and token not in model_vocab:
            # Added (non-special) tokens are matched on raw text: their content is literal.
            is_byte = convention is Convention.SENTENCEPIECE and _BYTE_TOKEN.match(token)
            token_bytes[token_id] = vocab_token_bytes(token, convention) if is_byte else token.encode("utf-8")
        else:
            token_bytes[token_id] = vocab_token_bytes(token, convention)
        byte_fallback[token_id] = convention is Convention.SENTENCEPIECE and bool(_BYTE_TOKEN.match(token))
    decisive = {key: spec.get(key) for key in ("model", "normalizer", "pre_tokenizer")}
    decisive["added"] = sorted(
        (i, str(t.content), bool(getattr(t, "special", False))) for i, t in added.items()
    )
    decisive["roles"] = sorted(roles.items())
    signature = hashlib.sha256(json.dumps(decisive, sort_keys=True, default=str).encode()).hexdigest()
    role_ids = {attr: getattr(tokenizer, f"{attr}_token_id", None) for attr in ROLE_ATTRS}
    role_ids = {attr: i for attr, i in role_ids.items() if isinstance(i, int)}
    return TokenTable(convention, tuple(token_bytes), roles, role_ids, byte_fallback, fingerprint, signature)


_LOCK = threading.Lock()
_FINGERPRINTS: weakref.WeakKeyDictionary[Any, tuple[int, str]] = weakref.WeakKeyDictionary()
_TABLES: OrderedDict[str, TokenTable] = OrderedDict()
_MAX_TABLES = 16


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A content hash of the tokenizer, memoised per object (recomputed if tokens were added since)."""
    size = len(tokenizer)
    try:
        known = _FINGERPRINTS.get(tokenizer)
    except TypeError:  # unhashable / not weak-referenceable: hash every time
        known = None
    if known is not None and known[0] == size:
        return known[1]
    special = {attr: getattr(tokenizer, f"{attr}_token_id", None) for attr in ROLE_ATTRS}
    special["all"] = sorted(getattr(tokenizer, "all_special_ids", []) or [])
    digest = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode("utf-8"))
    digest.update(json.dumps(special, sort_keys=True).encode())
    fingerprint = digest.hexdigest()
    with contextlib.suppress(TypeError):
        _FINGERPRINTS[tokenizer] = (size, fingerprint)
    return fingerprint


def token_table(tokenizer: Any) -> TokenTable:
    """The cached `TokenTable` of a tokenizer (a transformers PreTrainedTokenizerFast)."""
    fingerprint = tokenizer_fingerprint(tokenizer)
    with _LOCK:
        table = _TABLES.get(fingerprint)
        if table is not None:
            _TABLES.move_to_end(fingerprint)
            return table
    table = _build_table(tokenizer, fingerprint)
    with _LOCK:
        _TABLES[fingerprint] = table
        while len(_TABLES) > _MAX_TABLES:
            _TABLES.popitem(last=False)
    return table


_PAIR_CACHE: OrderedDict[tuple[str, str, str], Any] = OrderedDict()


def pair_cached(kind: str, teacher_tokenizer: Any, student_tokenizer: Any, build: Any) -> Any:
    """Memoise `build(teacher_table, student_table)` per (kind, teacher, student) content fingerprint."""
    teacher, student = token_table(teacher_tokenizer), token_table(student_tokenizer)
    key = (kind, teacher.fingerprint, student.fingerprint)
    with _LOCK:
        if key in _PAIR_CACHE:
            _PAIR_CACHE.move_to_end(key)
            return _PAIR_CACHE[key]
    value = build(teacher, student)
    with _LOCK:
        _PAIR_CACHE[key] = value
        while len(_PAIR_CACHE) > _MAX_TABLES:
            _PAIR_CACHE.popitem(last=False)
    return value


def token_bytes_table(tokenizer: Any) -> list[bytes | None]:
    """Canonical bytes of every id of the tokenizer (None for special tokens). Cached per tokenizer."""
    return list(token_table(tokenizer).token_bytes)


def canonical_token_bytes(tokenizer: Any, token_id: int) -> bytes | None:
    """Canonical bytes of one token id (None for a special token)."""
    table = token_table(tokenizer)
    if not 0 <= token_id < table.size:
        raise ValueError(f"token id {token_id} is outside the vocabulary (size {table.size})")
    return table.token_bytes[token_id]


def canonical_text_bytes(tokenizer: Any, ids: Any) -> bytes:
    """The bytes a sequence of ids stands for, special tokens left out."""
    table = token_table(tokenizer)
    return b"".join(table.token_bytes[int(i)] or b"" for i in ids)
