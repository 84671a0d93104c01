"""The dashboard in a real browser: the list, a running job whose curve grows, cancel, a failed job's error panel,
compare, a select_best job's summary and split charts, a download, and /docs' Authorize button working offline.
Screenshots: tests/artifacts/ui/*.png."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from dskd_client import Client
from tests.live_service import LiveService
from tests.ui.conftest import select_best_spec, shot

expect = pytest.importorskip("playwright.sync_api").expect


def submit(
    live: LiveService,
    *,
    name: str = "toy",
    steps: int = 10,
    wait: bool = True,
    spec: Callable[[str], dict] | None = None,
) -> str:
    """A job on the first dataset: `live.spec(name, steps)`, or `spec(dataset_id)` when given."""
    with Client(live.url, live.key) as client:
        datasets = client.datasets.list()
        dataset = datasets[0] if datasets else client.datasets.upload(live.data_file)
        job = client.jobs.create(spec(dataset.id) if spec else live.spec(dataset.id, name=name, steps=steps))
        if wait:
            client.jobs.wait(job.id, timeout=60)
        return job.id


def points(page: Any, chart: str) -> int:
    return int(page.locator(f'[data-chart="{chart}"]').get_attribute("data-points"))


def series(page: Any, chart: str) -> set[str]:
    """The names of the series a chart draws, once it has drawn its first points."""
    box = page.locator(f'[data-chart="{chart}"]')
    expect(box).not_to_have_attribute("data-points", "0")
    return set(json.loads(box.get_attribute("data-series") or "[]"))


def test_list_filter_and_empty_states(page: Any, live: LiveService) -> None:
    page.goto("/ui/")
    page.get_by_role("button", name="Forget").click()
    expect(page.locator('[data-test="no-key"]')).to_contain_text("dskd keys create")
    page.locator("#api-key").fill(live.key)
    page.get_by_role("button", name="Use key").click()
    expect(page.locator('[data-test="empty"]')).to_contain_text("dskd jobs submit")

    done = submit(live, name="sft baseline", steps=10)
    failed = submit(live, name="[nan] too high lr", steps=10)
    running = submit(live, name="[slow] dskd long", steps=400, wait=False)
    page.reload()
    rows = page.locator("#jobs tr")
    expect(rows).to_have_count(3)
    done_row = page.locator(f'tr[data-job="{done}"]')
    expect(done_row).to_contain_text("vanilla_kd")
    expect(done_row).to_contain_text("org/tiny-student")
    expect(done_row.locator('[data-metric="dev_ce"]')).to_have_text("2")
    expect(done_row).to_contain_text("10/10")
    expect(page.locator(f'tr[data-job="{running}"] [data-status]')).to_have_text("running", timeout=10_000)
    shot(page, "list")

    page.goto("/ui/#/?limit=2")  # pages follow the API's cursor
    expect(rows).to_have_count(2)
    page.locator('[data-test="next-page"]').click()
    expect(rows).to_have_count(1)
    expect(page.locator(f'tr[data-job="{done}"]')).to_be_visible()  # the oldest job is on the second page
    page.locator('[data-test="previous-page"]').click()
    expect(rows).to_have_count(2)

    page.goto("/ui/")
    page.locator('[data-filter="failed"]').click()
    expect(rows).to_have_count(1)
    expect(page.locator(f'tr[data-job="{failed}"]')).to_contain_text("failed")
    page.locator('[data-filter="queued"]').click()
    expect(page.locator(".empty")).to_contain_text("No queued jobs")


def test_running_job_curve_grows_then_cancel(page: Any, live: LiveService) -> None:
    job_id = submit(live, name="[slow] live curves", steps=400, wait=False)
    page.goto(f"/ui/#/jobs/{job_id}")
    expect(page.locator("h1")).to_have_text("[slow] live curves")
    page.wait_for_function(
        "() => +document.querySelector('[data-chart=loss]').dataset.points >= 3", timeout=15_000
    )
    first = points(page, "loss")
    page.wait_for_function(
        f"() => +document.querySelector('[data-chart=loss]').dataset.points >= {first + 4}", timeout=15_000
    )
    assert points(page, "loss") >= first + 4  # new points arrived through the event stream
    # Loss, dev loss and learning rate drawn by uPlot; the script reports no accuracies, gradients or Rouge-L.
    expect(page.locator(".u-legend")).to_have_count(3)
    expect(page.locator('[data-test="summary"]')).to_contain_text("/ 400")
    shot(page, "job-running")

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator('[data-test="cancel"]').click()
    # The page follows the state change: cancel requested, then cancelled when the worker stops the run.
    expect(page.locator(".title-row [data-status]")).to_have_text("cancelled", timeout=15_000)
    expect(page.locator('[data-test="cancel"]')).to_have_count(0)
    expect(page.locator('[data-test="events"]')).to_contain_text("status → cancelled")
    shot(page, "job-cancelled")


def test_cancel_asks_first(page: Any, live: LiveService) -> None:
    job_id = submit(live, name="[slow] keep me", steps=400, wait=False)
    page.goto(f"/ui/#/jobs/{job_id}")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.locator('[data-test="cancel"]').click()
    time.sleep(0.5)
    with Client(live.url, live.key) as client:
        assert client.jobs.get(job_id).status == "running"


def test_failed_job_shows_its_error(page: Any, live: LiveService) -> None:
    job_id = submit(live, name="[nan] diverges", steps=10)
    page.goto(f"/ui/#/jobs/{job_id}")
    panel = page.locator('[data-test="error-panel"]')
    expect(panel).to_be_visible()
    expect(panel.locator(".code")).to_have_text("non_finite_loss")
    expect(panel.locator("pre")).to_contain_text("the training loss became nan at step 3")
    expect(page.locator('[data-test="spec"]')).to_contain_text('"method": "vanilla_kd"')
    expect(page.locator('[data-test="cancel"]')).to_have_count(0)
    shot(page, "job-failed")


def test_compare_overlays_runs(page: Any, live: LiveService) -> None:
    short = submit(live, name="short run", steps=8)
    long = submit(live, name="long run", steps=20)
    page.goto("/ui/")
    for job_id in (short, long):
        page.locator(f'tr[data-job="{job_id}"] input[type=checkbox]').check()
    page.locator('[data-test="compare"]').click()
    expect(page).to_have_url(re.compile(r"#/compare\?ids="))
    table = page.locator('[data-test="compare-table"] tbody tr')
    expect(table).to_have_count(2)
    expect(
        page.locator(f'[data-test="compare-table"] tr[data-job="{long}"] [data-metric="dev_ce"]')
    ).to_have_text("2")
    page.wait_for_function("() => +document.querySelector('[data-chart=compare]').dataset.points === 20")
    expect(page.locator('[data-chart="compare"] .u-legend')).to_contain_text("long run")
    page.locator('[data-test="metric"]').select_option("eval:dev_ce")
    page.wait_for_function("() => +document.querySelector('[data-chart=compare]').dataset.points === 5")
    shot(page, "compare")


def test_select_best_job_summary_and_split_charts(page: Any, live: LiveService, monkeypatch) -> None:
    job_id = submit(live, spec=lambda dataset: select_best_spec(live, monkeypatch, dataset, "dskd demo"))
    page.goto(f"/ui/#/jobs/{job_id}")
    # The exported student is the best dev Rouge-L step (20), not the best dev CE one (30).
    best = page.locator('[data-test="best-dev"]')
    expect(best.locator(".k")).to_have_text("Best dev Rouge-L")
    expect(best.locator(".v")).to_have_text("85.18 @ step 20")
    expect(page.locator('[data-test="exported"] .v')).to_have_text("step 20")
    expect(page.locator('[data-test="final-metrics"]')).not_to_contain_text("_std")  # 0 under greedy decoding
    # One scale per chart: loss terms apart from [0, 1] figures, gradient norms, dev CE and dev scores.
    assert series(page, "loss") == {"loss", "ce", "kd", "kd_student_space", "kd_teacher_space", "ce_t2s"}
    assert series(page, "fractions") == {"t2s_acc", "agreement", "s2t_acc"}
    assert series(page, "other") == {"grad_norm", "grad_norm_clipped"}
    assert series(page, "dev-loss") == {"dev_ce", "dev_loss", "teacher_dev_ce"}
    assert series(page, "dev-generation") == {"dev_rougeL", "dev_exact_match"}
    assert series(page, "lr") == {"lr"}
    expect(page.locator(".u-legend")).to_have_count(6)
    events = page.locator('[data-test="events"]')
    exported = "student exported at step 30 (the weights of step 20, the best dev Rouge-L)"
    expect(events).to_contain_text(exported)
    expect(events).not_to_contain_text("_std")
    shot(page, "job-select-best")
    # The list shows the exported weights' dev Rouge-L beside their dev CE.
    page.goto("/ui/")
    row = page.locator(f'tr[data-job="{job_id}"]')
    expect(row.locator('[data-metric="dev_rougeL"]')).to_have_text("85.18")


def test_compare_shows_best_dev_rouge(page: Any, live: LiveService, monkeypatch) -> None:
    best_run = submit(live, spec=lambda dataset: select_best_spec(live, monkeypatch, dataset, "dskd"))
    plain = submit(live, name="vanilla kd", steps=30)
    page.goto(f"/ui/#/compare?ids={best_run},{plain}")
    expect(page.locator('[data-test="metric"]')).to_have_value("eval:dev_rougeL")
    expect(page.locator('[data-test="metric"] option[value$="_std"]')).to_have_count(0)
    page.wait_for_function("() => +document.querySelector('[data-chart=compare]').dataset.points === 3")
    header = page.locator('[data-test="compare-table"] thead')
    expect(header).to_contain_text("dev Rouge-L")
    expect(header).to_contain_text("best @ step")
    row = page.locator(f'[data-test="compare-table"] tr[data-job="{best_run}"]')
    # The best dev Rouge-L and its step, not the last evaluation's 85.01.
    expect(row.locator('[data-metric="dev_rougeL"]')).to_have_text("85.18 @ 20")
    expect(row.locator('[data-metric="dev_exact_match"]')).to_have_text("71 @ 20")
    expect(row.locator('[data-metric="exported_step"]')).to_have_text("20 best")
    other = page.locator(f'[data-test="compare-table"] tr[data-job="{plain}"]')
    expect(other.locator('[data-metric="dev_rougeL"]')).to_have_text("–")
    expect(other.locator('[data-metric="exported_step"]')).to_have_text("30 last")
    shot(page, "compare-select-best")


def test_download_by_plain_link(page: Any, live: LiveService, tmp_path) -> None:
    job_id = submit(live, name="export me", steps=5)
    page.goto(f"/ui/#/jobs/{job_id}")
    row = page.locator('[data-artifact="model.safetensors"]')
    expect(row).to_contain_text("KiB")
    with Client(live.url, live.key) as client:
        listed = client.artifacts.get(job_id, "model.safetensors")
    expect(row.locator(".sha")).to_have_text(listed.sha256)
    link = row.get_by_role("link", name="Download")
    assert link.get_attribute("href").startswith("/v1/downloads/")  # signed: no header, no blob in memory
    with page.expect_download() as info:
        link.click()
    download = info.value
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    assert download.suggested_filename == "model.safetensors"
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == listed.sha256
    expect(page.locator('[data-test="final-metrics"]')).to_contain_text("dev_ce 2")
    shot(page, "job-succeeded")


def test_docs_authorize_and_try_it_out_offline(page: Any, live: LiveService) -> None:
    page.goto("/docs")
    page.get_by_role("button", name=re.compile("Authorize")).first.click()
    page.locator(".modal-ux input").fill(live.key)
    page.locator(".modal-ux button.modal-btn.authorize").click()
    expect(page.locator(".modal-ux")).to_contain_text("Authorized")
    page.locator(".modal-ux button.btn-done").click()
    operation = page.locator("#operations-jobs-jobs_list")
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    operation.get_by_role("button", name="Execute").click()
    expect(operation.locator(".live-responses-table tbody .response-col_status")).to_have_text("200")
    operation.locator(".live-responses-table").scroll_into_view_if_needed()
    shot(page, "docs-authorized", full_page=False)
    page.goto("/redoc")
    expect(page.locator("h1").first).to_contain_text("dskd")
