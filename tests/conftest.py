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


def _toy_world_root(config: pytest.Config):
    cache = getattr(config, "cache", None)  # None under `-p no:cacheprovider`
    if cache is not None:
        return cache.mkdir("toy_world")
    return config._tmp_path_factory.mktemp("toy_world")  # type: ignore[attr-defined]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the toy world before the first test starts when any selected test needs it.

    Built here, its cost is not charged to the first test's timeout: on a loaded machine the build can take
    longer than `timeout` (600 s) although every test after it is quick.
    """
    if any("toy_world" in getattr(item, "fixturenames", ()) for item in session.items):
        from dskd_core.toy import build_toy_world

        session.config._dskd_toy_world = build_toy_world(  # type: ignore[attr-defined]
            _toy_world_root(session.config), size="fast", seed=0
        )


@pytest.fixture(scope="session")
def toy_world(request: pytest.FixtureRequest):
    """The "fast" toy world (pretrained and instruction-tuned teacher, pretrained students, splits), built once and
    cached across runs.

    The cache lives in pytest's cache dir (`.pytest_cache/d/toy_world`): a repeated local run reuses it, a clean
    CI checkout builds it before the first test (`pytest_collection_finish`; a few minutes on 2 CPU cores).
    """
    built = getattr(request.config, "_dskd_toy_world", None)
    if built is not None:
        return built
    from dskd_core.toy import build_toy_world

    return build_toy_world(_toy_world_root(request.config), size="fast", seed=0)
