"""Browser fixtures: Playwright (Python) driving Debian's chromium headless against the live test service.

Every page records console errors, uncaught exceptions and requests that leave the machine; a test fails if
there are any. Screenshots go to tests/artifacts/ui/ (kept after the run, for CI to publish).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from dskd_core.progress import ProgressEvent, RunResult
from tests.api.conftest import db_url, pg_url  # noqa: F401  (re-exported fixtures)
from tests.e2e.conftest import required_or_skip
from tests.live_service import LiveService, live, scripted_engine  # noqa: F401
from worker import tasks

CHROMIUM = os.environ.get("DSKD_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "ui"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).is_file():
        required_or_skip(f"no chromium at {CHROMIUM} (scripts/browser.sh installs Debian's package)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield browser
        browser.close()


class PageProblems:
    def __init__(self) -> None:
        self.console: list[str] = []
        self.external: list[str] = []


@pytest.fixture
def page(browser: Any, live: Any) -> Iterator[Any]:  # noqa: F811
    """A page on the live service, with its API key already stored; fails the test on console errors."""
    context = browser.new_context(
        base_url=live.url, viewport={"width": 1360, "height": 900}, accept_downloads=True
    )
    problems = PageProblems()

    def only_local(route: Any) -> None:
        if urlparse(route.request.url).hostname in {"127.0.0.1", "localhost"} or route.request.url.startswith(
            ("data:", "blob:")
        ):
            route.continue_()
        else:
            problems.external.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
    context.add_init_script(f"localStorage.setItem('dskd_api_key', {live.key!r});")
    page = context.new_page()
    page.on("console", lambda m: problems.console.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.console.append(f"uncaught: {e}"))
    page.problems = problems
    yield page
    context.close()
    assert (problems.console, problems.external) == ([], [])


def shot(page: Any, name: str, *, full_page: bool = True) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


# A select_best run as `make demo` reports it (DSKD, greedy dev Rouge-L after every epoch): 3 epochs of 10 steps,
# dev Rouge-L best at step 20 while dev CE keeps falling to step 30, so best dev CE and the exported step differ.
SELECT_BEST_STEPS = 30
# step: (dev_rougeL, dev_exact_match)
GENERATION_EVALS = {10: (61.2, 40.0), 20: (85.18, 71.0), 30: (85.01, 70.5)}
DEV_CE = {0: 4.2, 10: 1.9, 20: 0.62, 30: 0.5397}


def select_best_engine(
    spec: dict[str, Any], run_dir: Path, sink: Any, lease: Any, device: str | None
) -> RunResult:
    """The events the engine emits for `evaluation: {interval: epoch, select_best: true}`: dev CE evaluations,
    generation evals with their always-0 `*_std`, a checkpoint at each new best, the export of the best step."""
    total = SELECT_BEST_STEPS

    def emit(kind: str, step: int, metrics: dict[str, float]) -> None:
        sink.emit(ProgressEvent(kind, step=step, total_steps=total, epoch=step / 10, metrics=metrics))

    def dev_evals(step: int) -> dict[str, float]:
        emit("eval", step, {"dev_ce": DEV_CE[step], "dev_loss": 2.5 * DEV_CE[step]})
        rouge, exact = GENERATION_EVALS[step]
        scores = {
            "dev_rougeL": rouge,
            "dev_rougeL_std": 0.0,
            "dev_exact_match": exact,
            "dev_exact_match_std": 0.0,
        }
        emit("eval", step, scores)
        return {"dev_ce": DEV_CE[step], "dev_loss": 2.5 * DEV_CE[step], **scores}

    emit("started", 0, {})
    emit("eval", 0, {"dev_ce": DEV_CE[0], "dev_loss": 20.5, "teacher_dev_ce": 0.152})
    best: dict[str, float] = {}
    for step in range(1, total + 1):
        if lease.cancelled():
            return RunResult("cancelled", step - 1, total, None, {})
        kd_s, kd_t, ce_t2s = 16.0 / step, 12.0 / step, 0.3 + 2.0 / step
        train = {
            "ce": 0.28 + 3.0 / step,
            "kd_student_space": kd_s,
            "ce_t2s": ce_t2s,
            "kd_teacher_space": kd_t,
            "t2s_acc": 0.9 - 0.5 / step,
            "agreement": 0.89 - 0.6 / step,
            "s2t_acc": 0.94 - 0.5 / step,
            "kd": kd_s + kd_t + ce_t2s,
            "grad_norm": 1.9 + 8.0 / step,
            "grad_norm_clipped": 1.0,
            "lr": 2e-3 * (1 - step / total),
            "tokens_per_s": 5580.0,
            "elapsed_s": step * 0.02,
        }
        train["loss"] = 0.5 * train["ce"] + 0.5 * train["kd"]
        emit("step", step, train)
        if step in (10, 20):  # the ends of epochs 1 and 2; the last one is evaluated by `finish`
            scores = dev_evals(step)
            if not best or scores["dev_rougeL"] > best["dev_rougeL"]:
                best = {**train, **scores, "exported_step": float(step)}
                emit("checkpoint", step, scores)
    final = dev_evals(total)
    emit("checkpoint", total, final)
    export = run_dir / "export"
    export.mkdir(parents=True, exist_ok=True)
    (export / "config.json").write_text('{"model_type": "gpt2", "n_layer": 2}')
    (export / "model.safetensors").write_bytes(os.urandom(4_000))
    emit("exported", total, best)
    return RunResult("completed", total, total, export, best)


def select_best_spec(
    service: LiveService, monkeypatch: pytest.MonkeyPatch, dataset_id: str, name: str
) -> dict:
    """The spec of a select_best DSKD job named "[select-best] <name>"; such jobs run `select_best_engine`."""

    def engine(spec: dict[str, Any], *args: Any) -> RunResult:
        selects_best = (spec.get("name") or "").startswith("[select-best]")
        return (select_best_engine if selects_best else scripted_engine)(spec, *args)

    monkeypatch.setattr(tasks, "_run_engine", engine)
    spec = service.spec(dataset_id, name=f"[select-best] {name}", steps=SELECT_BEST_STEPS)
    spec["distill"] = {"method": "dskd", "divergence": "fkl"}
    spec["evaluation"] = {"interval": "epoch", "select_best": True, "do_sample": False, "seeds": [0]}
    return spec
