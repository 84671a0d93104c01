"""`dskd eval MODEL_DIR DATA`: Rouge-L and exact match, mean ± std over seeds, on a tiny saved model."""

from __future__ import annotations

import json
import re
import shutil

from typer.testing import CliRunner

from dskd_cli.main import app
from dskd_core.evaluate import run_eval, trained_prompt_template, unescape_template
from dskd_core.spec import EvalSpec

runner = CliRunner()


def numbers(output: str, label: str) -> tuple[float, float]:
    match = re.search(rf"^{label}: ([\d.]+) ± ([\d.]+)$", output, re.MULTILINE)
    assert match, output
    return float(match[1]), float(match[2])


def test_eval_prints_rouge_l_and_exact_match(toy_world):
    args = [
        "eval",
        str(toy_world.student),
        str(toy_world.dev),
        "--max-examples",
        "4",
        "--max-new-tokens",
        "12",
    ]
    greedy = runner.invoke(app, [*args, "--greedy", "--device", "cpu"])
    assert greedy.exit_code == 0, greedy.output
    assert "4 examples, greedy" in greedy.output
    expected = run_eval(
        toy_world.student,
        toy_world.dev,
        EvalSpec(do_sample=False, max_examples=4, max_new_tokens=12),
        device="cpu",
    )
    assert numbers(greedy.output, "Rouge-L") == (round(expected.rougeL.mean, 2), 0.0)
    assert numbers(greedy.output, "exact match") == (round(expected.exact_match.mean, 2), 0.0)

    sampled = runner.invoke(app, [*args, "--seeds", "1,2", "--device", "cpu"])
    assert sampled.exit_code == 0, sampled.output
    assert "4 examples, 2 seeds" in sampled.output
    mean, std = numbers(sampled.output, "Rouge-L")
    assert 0.0 <= mean <= 100.0 and std >= 0.0


def test_eval_refuses_bad_seeds_and_missing_data(toy_world, tmp_path):
    bad = runner.invoke(app, ["eval", str(toy_world.student), str(toy_world.dev), "--seeds", "x"])
    assert bad.exit_code == 2 and "error" in bad.output
    missing = runner.invoke(app, ["eval", str(toy_world.student), str(tmp_path / "none.jsonl")])
    assert missing.exit_code == 2 and "error" in missing.output


def export_with_template(toy_world, tmp_path, template: str):
    """The toy teacher exported as a job's student would be, its manifest recording `template`."""
    from dskd_core.export import export_student
    from dskd_core.models import load_model, load_tokenizer
    from dskd_core.spec import JobSpec

    spec = JobSpec.model_validate(
        {
            "student": {"name_or_path": str(toy_world.teacher)},
            "data": {"path": str(toy_world.train), "prompt_template": template},
            "distill": {"method": "sft"},
        }
    )
    model = load_model(spec.student, trainable=False, device="cpu")
    return export_student(
        tmp_path / "export", student=model, tokenizer=load_tokenizer(spec.student), spec=spec
    )


def greedy_rouge(model_dir, data, template) -> float:
    settings = EvalSpec(do_sample=False, max_examples=8, max_new_tokens=16)
    return run_eval(model_dir, data, settings, template, device="cpu").rougeL.mean


def test_eval_uses_the_template_of_the_export_manifest(toy_world, tmp_path):
    template = toy_world.manifest["prompt_template"]
    assert template != "none"
    export = export_with_template(toy_world, tmp_path, template)
    assert json.loads((export / "manifest.json").read_text())["prompt_template"] == template
    args = ["eval", str(export), str(toy_world.dev), "--greedy", "--max-examples", "8"]
    args += ["--max-new-tokens", "16", "--device", "cpu"]

    trained = greedy_rouge(export, toy_world.dev, template)
    plain = greedy_rouge(export, toy_world.dev, "none")
    # The bug this guards against: the teacher asked without its template scores far lower.
    assert trained > plain + 5.0

    found = runner.invoke(app, args)
    assert found.exit_code == 0, found.output
    assert f"prompt template: {json.dumps(template)} ({export / 'manifest.json'})" in found.output
    assert numbers(found.output, "Rouge-L")[0] == round(trained, 2)

    # An explicit flag wins over the manifest, and says so.
    given = runner.invoke(app, [*args, "--prompt-template", "none"])
    assert given.exit_code == 0, given.output
    assert 'prompt template: "none" (--prompt-template)' in given.output
    assert numbers(given.output, "Rouge-L")[0] == round(plain, 2)


def test_eval_unescapes_newlines_typed_on_the_command_line(toy_world, tmp_path):
    template = toy_world.manifest["prompt_template"]
    assert "\n" in template
    model = tmp_path / "model"  # no manifest here: only the flag gives the template
    shutil.copytree(toy_world.teacher, model)
    typed = template.replace("\n", "\\n")  # what a shell passes for '{prompt}\n'
    args = ["eval", str(model), str(toy_world.dev), "--greedy", "--max-examples", "8"]
    result = runner.invoke(
        app, [*args, "--max-new-tokens", "16", "--device", "cpu", "--prompt-template", typed]
    )
    assert result.exit_code == 0, result.output
    assert f"prompt template: {json.dumps(template)} (--prompt-template)" in result.output
    assert numbers(result.output, "Rouge-L")[0] == round(greedy_rouge(model, toy_world.dev, template), 2)

    default = runner.invoke(app, [*args[:5], "1", "--max-new-tokens", "4", "--device", "cpu"])
    assert default.exit_code == 0, default.output
    assert 'prompt template: "none" (default' in default.output


def test_unescape_template():
    assert unescape_template("{prompt}\\n") == "{prompt}\n"
    assert unescape_template("a\\tb\\r\\nc") == "a\tb\r\nc"
    assert unescape_template("keep \\\\n and \\x") == "keep \\n and \\x"
    assert unescape_template("already\nreal") == "already\nreal"


def test_trained_template_from_manifests(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    assert trained_prompt_template(model) is None
    # An export written before the manifest had the key: the job spec still holds it.
    legacy = {"format": "dskd-export/1", "spec": {"data": {"prompt_template": "Q: {prompt}\nA:"}}}
    (model / "manifest.json").write_text(json.dumps(legacy))
    assert trained_prompt_template(model) == ("Q: {prompt}\nA:", model / "manifest.json")
    (model / "manifest.json").write_text(json.dumps({**legacy, "prompt_template": "chat"}))
    assert trained_prompt_template(model)[0] == "chat"

    # A world directory that lists its models by name (as the toy world does) speaks for them...
    world = tmp_path / "world"
    (world / "teacher").mkdir(parents=True)
    (world / "manifest.json").write_text(
        json.dumps({"prompt_template": "{prompt}\n", "models": {"teacher": {}}})
    )
    assert trained_prompt_template(world / "teacher") == ("{prompt}\n", world / "manifest.json")
    # ...but not for a directory it does not list.
    (world / "other").mkdir()
    assert trained_prompt_template(world / "other") is None


def test_the_toy_teacher_is_evaluated_with_its_template(toy_world):
    found = trained_prompt_template(toy_world.teacher)
    assert found is not None and found[0] == toy_world.manifest["prompt_template"]


def test_eval_refuses_a_bad_template(toy_world):
    bad = runner.invoke(app, ["eval", str(toy_world.student), str(toy_world.dev), "--prompt-template", "{x}"])
    assert bad.exit_code == 2 and "prompt template" in bad.output
