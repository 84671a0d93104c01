"""The exported manifest as users download it: the job spec they submitted (models named as they named them,
the data by dataset id), never the worker's paths."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"  # dskd_core.export.MANIFEST (not imported: that module loads torch)


def _scrub(value: Any, hide: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return hide(value)
    if isinstance(value, dict):
        return {k: _scrub(v, hide) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, hide) for v in value]
    return value


def publish_manifest(export_dir: Path, service_spec: dict[str, Any], hide: Callable[[str], str]) -> None:
    """Rewrite export_dir/manifest.json with the service's spec and no server paths (atomically). The files
    it lists are untouched, so their sizes and sha256 still hold."""
    path = export_dir / MANIFEST
    if not path.is_file():
        return
    manifest = json.loads(path.read_text())
    manifest["spec"] = service_spec
    manifest["student"] = service_spec["student"]["name_or_path"]
    teacher = service_spec.get("teacher")
    manifest["teacher"] = teacher["name_or_path"] if teacher else None
    manifest = _scrub(manifest, hide)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(manifest, indent=2))
    os.replace(partial, path)
