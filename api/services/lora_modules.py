"""LoRA target modules checked at submission, without torch: the names of the modules peft's LoRA can wrap
(Linear, Embedding, Conv and GPT-2's Conv1D layers), per `model_type` of the student's config.json.

The table is what `dskd_core.preflight.adaptable_modules` finds on the meta device for each model type's default
configuration; `tests/api/test_lora_targets.py` rebuilds it from the installed transformers and fails when it
drifts. A model type not in the table gets no verdict here: the worker's pre-flight checks it on the real
configuration before any weights load.
"""

from __future__ import annotations

import json
from pathlib import Path

from dskd_core.preflight import lora_target_message, unknown_lora_targets
from dskd_core.spec import LoraSpec

# The Llama layout (attention q/k/v/o, gated MLP, embeddings, head), shared by most decoder families.
_LLAMA_LAYOUT = frozenset(
    {"down_proj", "embed_tokens", "gate_proj", "k_proj", "lm_head", "o_proj", "q_proj", "up_proj", "v_proj"}
)

LORA_MODULES: dict[str, frozenset[str]] = {
    "bloom": frozenset(
        {"dense", "dense_4h_to_h", "dense_h_to_4h", "lm_head", "query_key_value", "word_embeddings"}
    ),
    "cohere": _LLAMA_LAYOUT,
    "falcon": frozenset(
        {"dense", "dense_4h_to_h", "dense_h_to_4h", "lm_head", "query_key_value", "word_embeddings"}
    ),
    "gemma": _LLAMA_LAYOUT,
    "gemma2": _LLAMA_LAYOUT,
    "gemma3_text": _LLAMA_LAYOUT,
    "gpt2": frozenset({"c_attn", "c_fc", "c_proj", "lm_head", "wpe", "wte"}),
    "gpt_neox": frozenset(
        {"dense", "dense_4h_to_h", "dense_h_to_4h", "embed_in", "lm_head", "query_key_value"}
    ),
    "gptj": frozenset({"fc_in", "fc_out", "k_proj", "lm_head", "out_proj", "q_proj", "v_proj", "wte"}),
    "granite": _LLAMA_LAYOUT,
    "llama": _LLAMA_LAYOUT,
    "mistral": _LLAMA_LAYOUT,
    "mixtral": frozenset({"embed_tokens", "k_proj", "lm_head", "o_proj", "q_proj", "v_proj"}),
    "olmo": _LLAMA_LAYOUT,
    "olmo2": _LLAMA_LAYOUT,
    "opt": frozenset(
        {"embed_positions", "embed_tokens", "fc1", "fc2", "k_proj", "lm_head", "out_proj", "q_proj", "v_proj"}
    ),
    "phi": frozenset({"dense", "embed_tokens", "fc1", "fc2", "k_proj", "lm_head", "q_proj", "v_proj"}),
    "phi3": frozenset({"down_proj", "embed_tokens", "gate_up_proj", "lm_head", "o_proj", "qkv_proj"}),
    "qwen2": _LLAMA_LAYOUT,
    "qwen2_moe": frozenset(
        {
            "down_proj",
            "embed_tokens",
            "gate_proj",
            "k_proj",
            "lm_head",
            "o_proj",
            "q_proj",
            "shared_expert_gate",
            "up_proj",
            "v_proj",
        }
    ),
    "qwen3": _LLAMA_LAYOUT,
    "smollm3": _LLAMA_LAYOUT,
    "stablelm": _LLAMA_LAYOUT,
    "starcoder2": frozenset(
        {"c_fc", "c_proj", "embed_tokens", "k_proj", "lm_head", "o_proj", "q_proj", "v_proj"}
    ),
}


def lora_problem(lora: LoraSpec | None, model_dir: Path) -> str | None:
    """Why the student's LoRA targets cannot work (naming the modules that can), or None when they can or when
    its files give no verdict."""
    if lora is None or lora.target_modules == "all-linear":
        return None
    if not lora.target_modules:
        return 'no target modules: name modules or use "all-linear"'
    try:
        model_type = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None  # no readable config: the worker's pre-flight reports it
    known = LORA_MODULES.get(model_type) if isinstance(model_type, str) else None
    if known is None:
        return None
    # The table holds the last part of each name; a dotted target ("attn.c_attn") is judged by its last part.
    unknown = [t for t in lora.target_modules if unknown_lora_targets([t.rsplit(".", 1)[-1]], known)]
    return lora_target_message(unknown, model_type, known) if unknown else None
