"""The teacher cache in a training run: filled before the first step, then read by every batch.

`open_teacher_cache` looks up every training and dev example of the job in the entry of its teacher, checks the
shards it will read (a damaged one is deleted and its examples join the missing ones), runs the teacher over the
missing examples only (each process a share, in shards written as they fill up, so an interrupted build keeps what
it finished), and returns a `CachedTeacher`. Its `attach` gives a collated batch the teacher's last hidden states
under "teacher_hidden" (`[B, T, d_t]` on the teacher's tokenisation, zeros outside its label positions), which the
distillers read instead of running the teacher (`distillers.common.teacher_positions`, `cross.encode_sides`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dskd_core import models
from dskd_core.cache.keys import IGNORE_INDEX, entry_key, example_key, teacher_fingerprint, teacher_side
from dskd_core.cache.store import CacheEntry, Location, ShardReader, TeacherCache
from dskd_core.progress import CancelToken, ProgressEvent, ProgressSink
from dskd_core.spec import JobSpec
from dskd_core.training.step import any_rank

HIDDEN_KEY = "teacher_hidden"
SHARD_BYTES = 256 << 20  # rows buffered before a shard is written: the most a crash can lose
_STORAGE = {"fp32": torch.float32, "bf16": torch.bfloat16}


class CacheBuildCancelled(Exception):
    """The job was cancelled while the cache was being built (the finished shards are kept)."""


def uses_teacher_cache(spec: JobSpec) -> bool:
    """Methods that run the teacher on the (fixed) training data: every logit-level KD method."""
    info = spec.method_info
    return info.needs_teacher and info.vocabulary != "none" and spec.training.teacher_cache != "off"


@dataclass
class CachedTeacher:
    """Reads the teacher's hidden states of a job's examples from open (memory-mapped) shards."""

    entry: CacheEntry
    readers: dict[str, ShardReader]
    where: dict[str, dict[int, Location]]  # split ("train", "dev") -> dataset index -> where its rows are
    hidden_size: int
    output_dtype: torch.dtype  # the dtype the teacher itself returns: what the distillers would have seen
    status: str  # "hit", "built" or "extended"

    def attach(self, batch: dict[str, torch.Tensor], split: str, indices: Sequence[int]) -> None:
        """Add "teacher_hidden" to a collated batch of the dataset examples `indices` of `split`."""
        labels = batch["teacher_labels"] if "teacher_labels" in batch else batch["labels"]
        valid = labels != IGNORE_INDEX
        counts = valid.sum(-1).tolist()
        rows = []
        for b, j in enumerate(indices):
            location = self.where[split][j]
            rows.append(self.readers[location.shard].rows(location.item))
            if rows[-1].shape[0] != counts[b]:
                raise RuntimeError(
                    f"teacher cache {self.entry.key}: example {j} of {split} has the wrong row count"
                )
        out = torch.zeros(*labels.shape, self.hidden_size, dtype=self.output_dtype)
        if (
            rows
        ):  # one scatter for the batch: row order of `valid` is example by example, position by position
            out[valid] = torch.cat(rows).to(self.output_dtype)
        batch[HIDDEN_KEY] = out


def open_teacher_cache(
    spec: JobSpec,
    setup: Any,
    accelerator: Any,
    cache: TeacherCache,
    *,
    sink: ProgressSink,
    cancel: CancelToken,
    train_indices: Sequence[int] | None = None,
    shard_bytes: int = SHARD_BYTES,
) -> CachedTeacher:
    """Fill the cache with the job's missing examples and open it for reading (see the module docstring).

    `train_indices`: the training examples the job will read (default all): a short job does not pay for the
    teacher on data it never sees."""
    teacher = setup.teacher
    storage = spec.training.teacher_cache
    fingerprint = teacher_fingerprint(spec.teacher.name_or_path, teacher, cache.root)
    key, info = entry_key(spec, fingerprint, storage)
    output_dtype = _output_dtype(teacher, accelerator)
    info |= {
        "hidden_size": models.hidden_size(teacher),
        "output_dtype": str(output_dtype).removeprefix("torch."),
    }
    wanted = {"train": range(len(setup.train_set)) if train_indices is None else train_indices}
    if setup.dev_set is not None and len(setup.dev_set):
        wanted["dev"] = range(len(setup.dev_set))
    datasets = {"train": setup.train_set, "dev": setup.dev_set}
    keys = {
        name: {j: example_key(*teacher_side(datasets[name][j])) for j in indices}
        for name, indices in wanted.items()
    }
    examples = {k: datasets[name][j] for name, split_keys in keys.items() for j, k in split_keys.items()}

    if accelerator.is_main_process:
        entry = cache.entry(key, info)
        entry.remove_stale_temps()
        found = entry.locations()
        entry.check({found[k].shard for k in examples if k in found})
    accelerator.wait_for_everyone()
    entry = cache.entry(key, info)
    found = entry.locations()
    missing = sorted(
        (k for k in examples if k not in found), key=lambda k: (len(teacher_side(examples[k])[0]), k)
    )
    share = missing[accelerator.process_index :: accelerator.num_processes]
    built = _build(
        spec, setup, accelerator, entry, [examples[k] for k in share], share, sink, cancel, shard_bytes
    )
    if any_rank(not built, accelerator):
        raise CacheBuildCancelled
    accelerator.wait_for_everyone()

    found = entry.locations()
    lost = [k for k in examples if k not in found]
    if lost:  # another job's eviction between our build and now: rare, and a rerun recovers
        raise RuntimeError(f"teacher cache {key}: {len(lost)} examples vanished while the job started")
    where = {name: {j: found[k] for j, k in split_keys.items()} for name, split_keys in keys.items()}
    shards = {loc.shard for locs in where.values() for loc in locs.values()}
    readers = {name: entry.open_shard(name) for name in sorted(shards)}
    status = "hit" if not missing else ("built" if len(missing) == len(examples) else "extended")
    if accelerator.is_main_process:
        entry.touch(shards)
        freed = cache.evict(protect={key: shards})
        size = sum(rec["bytes"] for name, rec in entry.read_index().items() if name in shards)
        rows = sum(reader.offsets[-1] for reader in readers.values())
        metrics = {
            "cache_examples": float(len(examples)),
            "cache_computed": float(len(missing)),
            "cache_bytes": float(size),
            "cache_bytes_per_token": size / max(rows, 1),  # files on disk ÷ teacher positions they hold
            "cache_evicted_bytes": float(freed),
        }
        message = f"teacher cache {status}: entry {key}, {len(examples)} examples, {len(missing)} computed"
        sink.emit(ProgressEvent("log", metrics=metrics, message=message))
    return CachedTeacher(entry, readers, where, info["hidden_size"], output_dtype, status)


def _build(
    spec: JobSpec,
    setup: Any,
    accelerator: Any,
    entry: CacheEntry,
    examples: list[dict[str, list[int]]],
    keys: list[str],
    sink: ProgressSink,
    cancel: CancelToken,
    shard_bytes: int,
) -> bool:
    """Run the teacher over `examples` (sorted by length: little padding) and write shards; False if cancelled."""
    storage = _STORAGE[spec.training.teacher_cache]
    batch_size = spec.training.batch_size
    buffer_keys: list[str] = []
    buffer_rows: list[torch.Tensor] = []
    buffered = 0
    teacher = setup.teacher
    teacher.eval()
    for start in range(0, len(examples), batch_size):
        if cancel.cancelled():
            if buffer_keys:
                entry.add_shard(buffer_keys, buffer_rows)
            return False
        batch = setup.collate(examples[start : start + batch_size])
        dual = "teacher_input_ids" in batch
        ids = batch["teacher_input_ids" if dual else "input_ids"].to(accelerator.device)
        mask = batch["teacher_attention_mask" if dual else "attention_mask"].to(accelerator.device)
        labels = batch["teacher_labels" if dual else "labels"]
        with torch.no_grad(), accelerator.autocast():
            hidden = models.last_hidden_state(teacher, ids, mask)
        for b, key in enumerate(keys[start : start + batch_size]):
            rows = hidden[b][(labels[b] != IGNORE_INDEX).to(hidden.device)].to(storage).cpu()
            buffer_keys.append(key)
            buffer_rows.append(rows)
            buffered += rows.numel() * rows.element_size()
        if buffered >= shard_bytes:
            entry.add_shard(buffer_keys, buffer_rows)
            buffer_keys, buffer_rows, buffered = [], [], 0
            sink.emit(
                ProgressEvent("log", message=f"teacher cache: {start + batch_size} of {len(examples)} built")
            )
    if buffer_keys:
        entry.add_shard(buffer_keys, buffer_rows)
    return True


def _output_dtype(teacher: Any, accelerator: Any) -> torch.dtype:
    """The dtype of the teacher's last hidden state under this job's autocast (one token through the model)."""
    device = accelerator.device
    ids = torch.zeros(1, 1, dtype=torch.long, device=device)
    with torch.no_grad(), accelerator.autocast():
        return models.last_hidden_state(teacher, ids, torch.ones_like(ids)).dtype
