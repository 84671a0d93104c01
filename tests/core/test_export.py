"""The export directory: reloads with from_pretrained with identical logits, LoRA merged, manifest hashes right."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from dskd_core.checkpoint import latest_checkpoint
from dskd_core.export import export_student, verify_export
from dskd_core.models import load_model, load_tokenizer
from dskd_core.spec import JobSpec, ModelSpec
from dskd_core.train import run_job


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def sample_ids(tokenizer) -> torch.Tensor:
    return torch.tensor([tokenizer("what is 3 plus 4? 7")["input_ids"]])


def test_trained_export_reloads_with_the_trained_weights(toy_world, tmp_path):
    spec = JobSpec.model_validate(
        {
            "student": {"name_or_path": str(toy_world.student)},
            "data": {"path": str(toy_world.train)},
            "distill": {"method": "sft"},
            "training": {
                "max_steps": 2,
                "batch_size": 4,
                "max_length": 64,
                "max_prompt_length": 32,
                "checkpoint_interval": 2,
            },
        }
    )
    result = run_job(spec, tmp_path)
    # The final checkpoint holds the student exactly as it left the loop.
    trained = load_model(spec.student, trainable=True)
    weights = load_file(latest_checkpoint(tmp_path) / "student.safetensors")
    trained.load_state_dict(weights, strict=False)
    exported = AutoModelForCausalLM.from_pretrained(result.export_dir)
    tokenizer = AutoTokenizer.from_pretrained(result.export_dir)
    ids = sample_ids(tokenizer)
    torch.testing.assert_close(logits(exported, ids), logits(trained, ids), rtol=0, atol=0)
    untrained = load_model(spec.student, trainable=False)
    assert not torch.equal(logits(exported, ids), logits(untrained, ids))

    manifest = verify_export(result.export_dir)
    assert manifest["method"] == "sft" and manifest["spec"]["training"]["max_steps"] == 2
    assert {"torch", "transformers", "dskd"} <= set(manifest["versions"])
    assert "loss" in manifest["metrics"]
    for name, info in manifest["files"].items():
        data = (result.export_dir / name).read_bytes()
        assert info == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert {"config.json", "model.safetensors", "generation_config.json"} <= set(manifest["files"])
    assert "projectors.safetensors" not in manifest["files"]  # SFT has none
    generation = json.loads((result.export_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.eos_token_id


def test_lora_student_is_exported_merged_with_its_projectors(toy_world, tmp_path):
    spec = JobSpec.model_validate(
        {
            "student": {"name_or_path": str(toy_world.student), "lora": {"r": 4, "alpha": 8}},
            "teacher": {"name_or_path": str(toy_world.teacher)},
            "data": {"path": str(toy_world.train)},
        }
    )
    student = load_model(spec.student, trainable=True)
    torch.manual_seed(0)
    with torch.no_grad():  # LoRA's B starts at zero: make the adapters change the outputs
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    tokenizer = load_tokenizer(spec.student)
    projectors = {"t2s.weight": torch.randn(3, 5)}
    out = export_student(
        tmp_path / "export", student=student, tokenizer=tokenizer, spec=spec, projectors=projectors
    )

    exported = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name, _ in exported.named_parameters())
    ids = sample_ids(tokenizer)
    torch.testing.assert_close(logits(exported, ids), logits(student, ids), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        load_file(out / "projectors.safetensors")["t2s.weight"], projectors["t2s.weight"]
    )
    assert any("lora_B" in name for name, _ in student.named_parameters())  # the training model is untouched
    assert verify_export(out)["lora_merged"] is True


def test_verify_export_detects_a_changed_file(toy_world, tmp_path):
    student = ModelSpec(name_or_path=str(toy_world.student))
    spec = JobSpec.model_validate({"student": student, "data": {"path": "x"}, "distill": {"method": "sft"}})
    tokenizer = load_tokenizer(spec.student)
    out = export_student(
        tmp_path / "e", student=load_model(spec.student, trainable=False), tokenizer=tokenizer, spec=spec
    )
    assert not list(tmp_path.glob(".tmp-*"))  # the temporary directory was renamed away
    with open(out / "config.json", "a") as f:
        f.write(" ")
    with pytest.raises(ValueError, match=r"config\.json"):
        verify_export(out)
