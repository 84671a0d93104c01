"""Shared test setup and fixtures.

Session setup: offline (nothing from a model hub), no tokenizers thread pool (it warns after fork), and a fixed,
small number of torch threads so CPU timings stay predictable on a 2-core runner.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True, scope="session")
def _teacher_cache_in_a_temp_dir(tmp_path_factory: pytest.TempPathFactory):
    """`dskd train` caches teacher outputs under $DSKD_CACHE_DIR: never the developer's own cache in tests."""
    previous = os.environ.get("DSKD_CACHE_DIR")
    os.environ["DSKD_CACHE_DIR"] = str(tmp_path_factory.mktemp("teacher_cache"))
    yield
    if previous is None:
        os.environ.pop("DSKD_CACHE_DIR", None)
    else:
        os.environ["DSKD_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def toy_world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The "fast" toy world (pretrained and instruction-tuned teacher, pretrained students, splits), built once and
    cached across runs.

    The cache lives in pytest's cache dir (`.pytest_cache/d/toy_world`): a repeated local run reuses it, a clean
    CI checkout builds it (a few minutes on 2 CPU cores).
    """
    from dskd_core.toy import build_toy_world

    cache = getattr(request.config, "cache", None)  # None under `-p no:cacheprovider`
    root = cache.mkdir("toy_world") if cache is not None else tmp_path_factory.mktemp("toy_world")
    return build_toy_world(root, size="fast", seed=0)
