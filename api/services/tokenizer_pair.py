"""The tokenizer-pair check at submission, with the `tokenizers` library alone (no torch, no transformers).

The engine's rule (`dskd_core.preflight.check_pair`): same-vocabulary methods feed the student's token ids to
the teacher, so every id must mean the same token on both sides and the special tokens (but pad) must agree.
Here it is answered from the files a saved tokenizer leaves in its directory: `tokenizer.json` (vocabulary with
its added tokens) and `tokenizer_config.json` / `special_tokens_map.json` (special tokens). A directory without
`tokenizer.json` gets no verdict here; the worker's pre-flight still checks it before any weights load.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from dskd_core.preflight import valid_methods
from dskd_core.spec import METHOD_INFO, Method

_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "cls_token", "mask_token")
_CACHE_SIZE = 32


class _Cache:
    """Fingerprints by (directory, file mtimes): a popular pair is parsed once, an edited one again."""

    def __init__(self) -> None:
        self._items: OrderedDict[tuple[Any, ...], tuple[dict[str, int], dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> tuple[dict[str, int], dict[str, Any]] | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, key: tuple[Any, ...], value: tuple[dict[str, int], dict[str, Any]]) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > _CACHE_SIZE:
                self._items.popitem(last=False)


_cache = _Cache()


def _content(value: Any) -> Any:
    # A special token is saved as a string or as a serialised AddedToken {"content": ...}.
    if isinstance(value, dict):
        return value.get("content")
    if isinstance(value, list):
        return sorted(str(_content(v)) for v in value)
    return value


def _specials(model_dir: Path) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = model_dir / name
        if not path.is_file():
            continue
        config = json.loads(path.read_text(encoding="utf-8"))
        for key in (*_SPECIAL_KEYS, "additional_special_tokens"):
            if config.get(key) is not None:
                found.setdefault(key, _content(config[key]))
    return found


def tokenizer_fingerprint(model_dir: Path) -> tuple[dict[str, int], dict[str, Any]] | None:
    """(vocabulary with added tokens, special tokens but pad) of a saved tokenizer, or None without a
    tokenizer.json. Raises ValueError for files that cannot be read."""
    tokenizer_file = model_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        return None
    stamps = tuple(
        (name, (model_dir / name).stat().st_mtime_ns)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
        if (model_dir / name).is_file()
    )
    key = (str(model_dir), stamps)
    cached = _cache.get(key)
    if cached is not None:
        return cached
    from tokenizers import Tokenizer

    try:
        vocab = Tokenizer.from_file(str(tokenizer_file)).get_vocab(with_added_tokens=True)
        specials = _specials(model_dir)
    except Exception as e:  # the tokenizers library raises its own Exception type on bad files
        raise ValueError(f"the tokenizer files cannot be read ({type(e).__name__})") from None
    _cache.put(key, (vocab, specials))
    return vocab, specials


def pair_problem(method: Method, teacher_dir: Path, student_dir: Path) -> str | None:
    """Why `method` cannot work for this pair (naming the valid methods), or None when it can or when the
    files give no verdict."""
    if METHOD_INFO[method].vocabulary != "same":
        return None
    teacher = tokenizer_fingerprint(teacher_dir)
    student = tokenizer_fingerprint(student_dir)
    if teacher is None or student is None:
        return None
    if teacher == student:
        return None
    t_vocab, s_vocab = teacher[0], student[0]
    shared = len(t_vocab.keys() & s_vocab.keys())
    what = "vocabularies" if t_vocab != s_vocab else "special tokens"
    return (
        f"method '{method.value}' needs the teacher and the student to share one tokenizer, but their {what} "
        f"differ (teacher {len(t_vocab)} tokens, student {len(s_vocab)} tokens, {shared} shared). "
        f"Valid methods for this pair: {', '.join(valid_methods(False))}."
    )
