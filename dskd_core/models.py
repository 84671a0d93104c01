"""Loading teacher and student, and the family-agnostic pieces the distillers need.

Never sniff attributes such as `model.transformer.wte`: use `get_input_embeddings()`,
`get_output_embeddings()` and the model's `base_model` (the backbone that returns the last hidden state).
"""

from __future__ import annotations

import torch
from torch import nn

from dskd_core.spec import ModelSpec

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class ModelLoadError(ValueError):
    """A model or tokenizer that cannot be used; the message says what to do."""


def torch_dtype(name: str) -> torch.dtype | str:
    return "auto" if name == "auto" else _DTYPES[name]


def load_tokenizer(spec: ModelSpec):
    """Load a tokenizer (hub id or local dir). A missing pad token falls back to EOS."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(spec.name_or_path, revision=spec.revision)
    except Exception as e:  # hub/network/format errors all end here
        raise ModelLoadError(f"cannot load the tokenizer of '{spec.name_or_path}': {e}") from e
    if tok.eos_token_id is None:
        raise ModelLoadError(
            f"the tokenizer of '{spec.name_or_path}' has no EOS token; set one and save it again"
        )
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(spec: ModelSpec, *, trainable: bool, device: torch.device | str = "cpu") -> nn.Module:
    """Load a causal LM. Teachers (trainable=False) are put in eval mode with gradients off.

    A student with `spec.lora` gets peft LoRA adapters (everything else frozen).
    """
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            spec.name_or_path, revision=spec.revision, dtype=torch_dtype(spec.dtype)
        )
    except Exception as e:
        raise ModelLoadError(f"cannot load the model '{spec.name_or_path}': {e}") from e
    model.to(device)
    if not trainable:
        model.eval()
        model.requires_grad_(False)
        return model
    if spec.lora is not None:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=spec.lora.r,
            lora_alpha=spec.lora.alpha,
            lora_dropout=spec.lora.dropout,
            target_modules=spec.lora.target_modules,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
    model.train()
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def last_hidden_state(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """The final hidden states [B, T, d] (after the final norm), without keeping the other layers'."""
    backbone = unwrap(model).base_model
    return backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def output_head(model: nn.Module) -> nn.Module:
    """The LM head (a Linear whose weight is [V, d])."""
    head = unwrap(model).get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise ModelLoadError(
            f"{type(model).__name__} has no output embeddings: it is not a causal LM head model"
        )
    return head


def input_embeddings(model: nn.Module) -> nn.Embedding:
    return unwrap(model).get_input_embeddings()


def hidden_size(model: nn.Module) -> int:
    return output_head(model).weight.shape[1]
