"""The README's main command, `make demo` (scripts/demo.sh), end to end on the test toy world with a short budget:
the embedded service starts, the DSKD job runs over REST, the student is downloaded, loaded and scored next to the
teacher. The full-budget demo's figures are in the README (a fresh clone's `time make demo`)."""

from __future__ import annotations

import os
import re
import subprocess

from tests.e2e.conftest import REPO_ROOT, free_port


def test_the_demo_runs_end_to_end_with_a_short_budget(toy_world, tmp_path):
    world = tmp_path / "world_fast"  # demo.sh names a fast world "<WORLD>_fast"
    world.symlink_to(toy_world.root, target_is_directory=True)
    env = {
        **os.environ,
        "WORLD": str(world),
        "STEPS": "40",
        "SFT": "0",
        "PORT": str(free_port()),
        "DSKD_DATA_DIR": str(tmp_path / "service"),
        "OUT": str(tmp_path / "students"),
    }
    done = subprocess.run(
        ["bash", "scripts/demo.sh"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "status: succeeded" in out
    assert "sha256" in out and "verified" in out
    # Every sample prompt has the teacher's and the student's answer with a score.
    assert (
        len(re.findall(r"^\s+teacher\s+\d+\.\d", out, re.M))
        == len(re.findall(r"^\s+dskd\s+\d+\.\d", out, re.M))
        > 0
    )
    sample = re.search(r"mean Rouge-L on the (\d+) prompts above .*: teacher ([\d.]+), dskd ([\d.]+)", out)
    split = re.search(r"mean Rouge-L on all (\d+) test prompts .*: teacher ([\d.]+), dskd ([\d.]+)", out)
    assert sample and split, out[-2000:]
    assert int(split.group(1)) == len((toy_world.root / "test.jsonl").read_text().splitlines())
    assert float(sample.group(2)) > 50 and float(split.group(2)) > 50  # the toy teacher answers well
    assert re.search(r"the dskd student scores \d+\.\d\d× the teacher's Rouge-L on the sample", out)
    assert (tmp_path / "students" / "dskd" / "student.tar").exists()
