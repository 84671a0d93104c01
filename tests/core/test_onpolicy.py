"""On-policy KD: the coin, the sampled KD batch (same and cross vocabulary), CE on the references, training."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from dskd_core.data import IGNORE_INDEX
from dskd_core.distillers import TokenCounts
from dskd_core.onpolicy import KD_KEY, OnPolicySampler, draw, prompt_rows, split_loss
from dskd_core.spec import JobSpec
from dskd_core.train import TrainingModule, count_tokens, dev_ce, make_accelerator, prepare, run_job

SMALL = {"max_steps": 2, "batch_size": 2, "max_length": 40, "max_prompt_length": 32, "lr": 3e-3}


def make_spec(world, method: str, *, cross: bool = False, ratio: float = 1.0, **training) -> JobSpec:
    return JobSpec.model_validate(
        {
            "student": {"name_or_path": str(world.cross_student if cross else world.student)},
            "teacher": {"name_or_path": str(world.teacher)},
            "data": {"path": str(world.train), "max_examples": 24},
            "distill": {"method": method, "on_policy_ratio": ratio, "on_policy_start_epoch": 1},
            "training": SMALL | training,
        }
    )


def responses(batch, key: str = "labels") -> list[list[int]]:
    return [[t for t in row if t != IGNORE_INDEX] for row in batch[key].tolist()]


def test_the_coin_follows_the_ratio_and_is_a_function_of_the_position():
    assert all(draw(0, s, i, 0, 1.0)[0] for s in range(50) for i in range(2))
    assert not any(draw(0, s, i, 0, 0.0)[0] for s in range(50) for i in range(2))
    heads = sum(draw(7, s, 0, 0, 0.3)[0] for s in range(2000))
    assert abs(heads / 2000 - 0.3) < 0.04  # binomial std ≈ 0.01
    assert draw(7, 5, 1, 0, 0.5) == draw(7, 5, 1, 0, 0.5) != draw(7, 5, 0, 0, 0.5)


def test_on_policy_is_refused_for_other_methods(toy_world):
    with pytest.raises(ValidationError, match="vanilla_kd, dskd, dskd_eta, dskd_cma"):
        make_spec(toy_world, "uld", cross=True)


@pytest.fixture(scope="module")
def vanilla(toy_world):
    spec = make_spec(toy_world, "vanilla_kd")
    accelerator = make_accelerator("fp32", "cpu")
    setup = prepare(spec, accelerator.device)
    sampler = OnPolicySampler(spec, setup.student, setup.student_tokenizer, None, setup.collate)
    batch = setup.collate([setup.train_set[i] for i in range(4)])
    return spec, accelerator, setup, sampler, batch


def test_samples_keep_the_prompt_and_replace_the_response(vanilla):
    spec, _, setup, sampler, batch = vanilla
    kd = sampler.sample(batch, seed=3)
    assert prompt_rows(kd["input_ids"], kd["labels"]) == prompt_rows(batch["input_ids"], batch["labels"])
    assert responses(kd) != responses(batch)  # an untrained student does not write the references
    assert torch.equal(sampler.sample(batch, seed=3)["input_ids"], kd["input_ids"])  # seeded
    eos = setup.student_tokenizer.eos_token_id
    longest = max(len(r) for r in responses(batch))
    for row in responses(kd):
        # at most the longest reference, plus EOS only when the student emitted it
        assert len(row) <= longest + 1 and eos not in row[:-1]

    # r = 1: every micro-batch of an on-policy epoch gets a sample; before the start epoch, none.
    micro = [((0, 1), dict(batch)), ((0, 2), dict(batch))]
    assert sampler.attach(micro, step=0, rank=0) == 2 and all(KD_KEY in b for _, b in micro)
    late = sampler.__class__(
        spec.model_copy(update={"distill": spec.distill.model_copy(update={"on_policy_start_epoch": 2})}),
        setup.student,
        setup.student_tokenizer,
        None,
        setup.collate,
    )
    micro = [((0, 1), dict(batch)), ((1, 0), dict(batch))]  # both come from epoch 1 (counted from 1)
    assert late.attach(micro, step=0, rank=0) == 0


def test_ce_stays_on_the_references_and_kd_uses_the_sample(vanilla):
    spec, accelerator, setup, sampler, batch = vanilla
    module = TrainingModule(setup.student, setup.distiller).eval()
    with_sample = {**batch, KD_KEY: sampler.sample(batch, seed=1)}
    tokens = count_tokens([with_sample], accelerator)
    assert tokens.student == sum(map(len, responses(batch)))
    assert tokens.kd_student == sum(map(len, responses(with_sample[KD_KEY])))
    out = module(with_sample, tokens)
    expected_ce = dev_ce(setup.student, setup.student_tokenizer, [batch], accelerator)
    assert out.metrics["ce"] == pytest.approx(expected_ce, rel=1e-5)
    kd_only = setup.distiller(with_sample[KD_KEY], TokenCounts(tokens.kd_student), kd_rate=1.0)
    rate = spec.distill.kd_rate
    assert float(out.loss) == pytest.approx((1 - rate) * expected_ce + rate * float(kd_only.loss), rel=1e-5)
    # A step without a sample keeps the ordinary path.
    plain = count_tokens([batch], accelerator)
    assert plain.kd_student is None
    assert float(module(batch, plain).loss) == pytest.approx(float(setup.distiller(batch, plain).loss))
    # The split is exact: the reference batch as its own KD batch gives the single-batch loss.
    same = split_loss(setup.distiller, batch, batch, TokenCounts(plain.student, kd_student=plain.student))
    assert float(same.loss) == pytest.approx(float(setup.distiller(batch, plain).loss), rel=1e-5)


@pytest.mark.parametrize("method", ["dskd_eta", "dskd_cma"])
def test_cross_vocabulary_samples_are_retokenised_for_the_teacher(toy_world, method):
    spec = make_spec(toy_world, method, cross=True)
    setup = prepare(spec, make_accelerator("fp32", "cpu").device)
    sampler = OnPolicySampler(
        spec, setup.student, setup.student_tokenizer, setup.teacher_tokenizer, setup.collate
    )
    batch = setup.collate([setup.train_set[i] for i in range(3)])
    kd = sampler.sample(batch, seed=5)
    s_tok, t_tok = setup.student_tokenizer, setup.teacher_tokenizer
    assert prompt_rows(kd["teacher_input_ids"], kd["teacher_labels"]) == prompt_rows(
        batch["teacher_input_ids"], batch["teacher_labels"]
    )
    for s_row, t_row in zip(responses(kd), responses(kd, "teacher_labels"), strict=True):
        s_text = s_tok.decode(s_row, skip_special_tokens=True)
        assert t_tok.decode(t_row, skip_special_tokens=True) == s_text
    if method == "dskd_eta":  # the alignment is recomputed for the sample
        assert kd["eta_teacher_index"].shape == kd["labels"].shape
        assert (kd["eta_teacher_index"] >= 0).any()


@pytest.mark.parametrize(
    ("method", "cross"), [("vanilla_kd", False), ("dskd", False), ("dskd_eta", True), ("dskd_cma", True)]
)
def test_a_few_on_policy_steps_train(toy_world, tmp_path, method, cross):
    result = run_job(make_spec(toy_world, method, cross=cross, max_steps=1, grad_accum=2), tmp_path)
    assert result.status == "completed" and math.isfinite(result.metrics["loss"])
    assert result.metrics["on_policy"] == 1.0 and "sample_ce" in result.metrics


def test_resume_reproduces_an_on_policy_run(toy_world, tmp_path):
    from tests.core.test_checkpoint import CancelAfter

    spec = make_spec(toy_world, "dskd", ratio=0.5, max_steps=2, grad_accum=2, checkpoint_interval=1)
    straight = run_job(spec, tmp_path / "straight")
    assert run_job(spec, tmp_path / "resumed", cancel=CancelAfter(1)).steps == 1
    resumed = run_job(spec, tmp_path / "resumed")
    assert resumed.metrics["loss"] == pytest.approx(straight.metrics["loss"], rel=1e-5)
    assert resumed.metrics["on_policy"] == straight.metrics["on_policy"]
