"""The distilled student as a Hugging Face directory that loads with `AutoModelForCausalLM.from_pretrained`.

    export/config.json, model.safetensors, generation_config.json   the student (LoRA merged in)
    export/tokenizer files                                        the student's tokenizer
    export/projectors.safetensors                                 the distiller's projectors (if it has any)
    export/manifest.json                                          files (size, sha256), job spec, metrics, versions,
                                                                  and the prompt template (`dskd eval` reads it)

Written into a temporary directory and renamed, like checkpoints: an `export/` directory is always whole.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dskd_core.checkpoint import atomic_publish, save_tensors
from dskd_core.spec import JobSpec

MANIFEST = "manifest.json"
PROJECTORS = "projectors.safetensors"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def merged_student(student: nn.Module) -> nn.Module:
    """The plain transformers model: a peft model is copied and its adapters merged (the original keeps training)."""
    if hasattr(student, "merge_and_unload"):
        return copy.deepcopy(student).merge_and_unload()
    return student


def _versions() -> dict[str, str]:
    import transformers

    import dskd_core

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dskd": dskd_core.__version__,
    }


def export_student(
    out_dir: str | Path,
    *,
    student: nn.Module,
    tokenizer: Any,
    spec: JobSpec,
    projectors: dict[str, torch.Tensor] | None = None,
    metrics: dict[str, float] | None = None,
) -> Path:
    """Write the export directory atomically and return its path."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".tmp-{out_dir.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()

    model = merged_student(student)
    gen = model.generation_config
    # Generation must stop at the tokenizer's EOS and pad with its pad token, as in training.
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if projectors:
        save_tensors(projectors, tmp / PROJECTORS)

    files = {
        f.name: {"size": f.stat().st_size, "sha256": sha256_file(f)}
        for f in sorted(tmp.iterdir())
        if f.is_file()
    }
    manifest = {
        "format": "dskd-export/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "method": spec.distill.method.value,
        "student": spec.student.name_or_path,
        "teacher": spec.teacher.name_or_path if spec.teacher else None,
        "lora_merged": spec.student.lora is not None,
        # The prompts the student learned to answer: evaluating with another template scores it unfairly.
        "prompt_template": spec.data.prompt_template,
        "files": files,
        "metrics": dict(metrics or {}),
        "versions": _versions(),
        "spec": json.loads(spec.to_json()),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    atomic_publish(tmp, out_dir)
    return out_dir


def verify_export(export_dir: str | Path) -> dict[str, Any]:
    """Check every file listed in the manifest against its size and sha256; returns the manifest."""
    export_dir = Path(export_dir)
    manifest = json.loads((export_dir / MANIFEST).read_text())
    for name, info in manifest["files"].items():
        path = export_dir / name
        if not path.is_file():
            raise ValueError(f"{export_dir}: {name} is listed in the manifest but missing")
        if path.stat().st_size != info["size"] or sha256_file(path) != info["sha256"]:
            raise ValueError(f"{export_dir}: {name} does not match its manifest entry")
    return manifest
