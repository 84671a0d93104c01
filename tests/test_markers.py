"""The `slow` marker: out of the default run (`make test`), in `make test-all`.

Checked on a throwaway test file collected with the project's own pytest settings and the exact arguments
the Makefile passes, so a change to either that lets slow tests back into the default run fails here.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def collected(tmp_path: Path, *args: str) -> set[str]:
    (tmp_path / "test_probe.py").write_text(
        "import pytest\n\n\ndef test_quick():\n    pass\n\n\n@pytest.mark.slow\ndef test_long():\n    pass\n"
    )
    command = [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path)]
    out = subprocess.run(
        [*command, "--collect-only", "-q", "-p", "no:cacheprovider", *args, str(tmp_path / "test_probe.py")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode in (0, 5), out.stdout + out.stderr
    return {line.split("::")[-1] for line in out.stdout.splitlines() if "::" in line}


def make_args(target: str) -> list[str]:
    """The pytest arguments a Makefile target passes to scripts/test.sh."""
    recipe = re.search(rf"^{target}:.*\n\t(.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert recipe, target
    words = shlex.split(recipe.group(1))
    assert words[:2] == ["bash", "scripts/test.sh"], words
    return words[2:]


def test_the_default_run_leaves_slow_tests_out(tmp_path: Path) -> None:
    assert collected(tmp_path, *make_args("test")) == {"test_quick"}


def test_test_all_includes_them(tmp_path: Path) -> None:
    assert collected(tmp_path, *make_args("test-all")) == {"test_quick", "test_long"}
