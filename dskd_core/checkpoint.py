"""Resumable training state, written atomically.

A checkpoint is a directory `run_dir/checkpoints/step-000100/` holding everything needed to continue a run
exactly where it stopped:

    student.safetensors     the student's trainable parameters (all weights, or only the LoRA adapters)
    distiller.safetensors   the distiller's own state (projectors)
    optimizer.pt            optimizer and LR-scheduler state (torch.save, loaded with weights_only=True)
    rng.pt                  python / numpy / torch (and CUDA) RNG states, so dropout continues identically
    state.json              step, data position (epoch, batches consumed in it), best metric, the job spec
    complete                written last: a directory without it is ignored

It is written into a temporary directory, fsynced, then renamed, so a crash mid-write never leaves a checkpoint
that looks complete.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

_PREFIX = "step-"
_TMP_PREFIX = ".tmp-"
_COMPLETE = "complete"


@dataclass
class TrainState:
    """The scalar part of the training state (what `state.json` holds)."""

    step: int = 0
    epoch: int = 0  # the epoch the next micro-batch comes from
    batches_in_epoch: int = 0  # micro-batches of that epoch already consumed
    total_steps: int = 0
    best_metric: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    # Checkpoint selection by a generation-based dev score (EvalSpec.select_best): the best step and its dev metrics.
    best_step: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    spec_json: str = ""


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_complete(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (partial temp dirs and unmarked dirs are ignored)."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith(_PREFIX) and (d / _COMPLETE).is_file():
            try:
                found.append((int(d.name[len(_PREFIX) :]), d))
            except ValueError:
                continue
    return [d for _, d in sorted(found)]


def step_dir(run_dir: str | Path, step: int) -> Path:
    """Where the checkpoint of `step` lives (whether or not it was written)."""
    return checkpoint_dir(run_dir) / f"{_PREFIX}{step:06d}"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    complete = list_complete(run_dir)
    return complete[-1] if complete else None


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the parameters that train (all of them for full fine-tuning, the adapters for LoRA)."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def _untied(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors sharing memory (tied embeddings); copy the second and later views.
    seen: set[tuple[int, int]] = set()
    out = {}
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        out[name] = t.clone() if key in seen else t
        seen.add(key)
    return out


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file(_untied(tensors), str(path))


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # numpy's state holds an ndarray, which weights_only loading refuses: store it as a list.
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, list | tuple) else x


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a rename is durable once its directory is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for f in path.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_path(path)


def atomic_publish(tmp: Path, final: Path) -> None:
    """fsync everything in `tmp`, then rename it to `final` (replacing an older directory of that name)."""
    _fsync_tree(tmp)
    if final.exists():
        trash = final.with_name(f"{_TMP_PREFIX}old-{final.name}-{os.getpid()}")
        os.rename(final, trash)
        os.rename(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, final)
    fsync_path(final.parent)


def save_checkpoint(
    run_dir: str | Path,
    state: TrainState,
    *,
    student: nn.Module,
    distiller: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    keep: int,
    protect: int | None = None,
) -> Path:
    """Write the full training state atomically and keep only the newest `keep` complete checkpoints, plus the
    checkpoint of step `protect` (the best one), which rotation never deletes."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = step_dir(run_dir, state.step)
    tmp = root / f"{_TMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_tensors(trainable_state(student), tmp / "student.safetensors")
    save_tensors(distiller.state_dict(), tmp / "distiller.safetensors")
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt"
    )
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(asdict(state), indent=2))
    (tmp / _COMPLETE).write_text("")
    atomic_publish(tmp, final)
    kept = step_dir(run_dir, protect) if protect is not None else None
    for old in list_complete(run_dir)[:-keep]:
        if old != kept:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_student(path: str | Path, student: nn.Module) -> None:
    """Copy a checkpoint's student weights into `student` (e.g. the best checkpoint, before export)."""
    path = Path(path)
    weights = load_file(str(path / "student.safetensors"))
    trainable = {name for name, p in student.named_parameters() if p.requires_grad}
    if set(weights) != trainable:
        raise ValueError(
            f"{path}: the checkpoint's student parameters do not match this model "
            f"(missing {sorted(trainable - set(weights))[:3]}, unexpected {sorted(set(weights) - trainable)[:3]})"
        )
    params = dict(student.named_parameters())
    with torch.no_grad():
        for name, t in weights.items():
            params[name].copy_(t.to(params[name].device))


def load_checkpoint(
    path: str | Path,
    *,
    student: nn.Module,
    distiller: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    restore_rng: bool = True,
) -> TrainState:
    """Restore a checkpoint written by `save_checkpoint` into already-built objects; returns its scalar state."""
    path = Path(path)
    load_student(path, student)
    distiller.load_state_dict(load_file(str(path / "distiller.safetensors")))
    opt = torch.load(path / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    if restore_rng:
        set_rng_state(torch.load(path / "rng.pt", weights_only=True))
    return TrainState(**json.loads((path / "state.json").read_text()))
