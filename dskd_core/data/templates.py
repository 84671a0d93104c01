"""Rendering a record's prompt as the text the model sees (training, evaluation and on-policy sampling).

Templates (`DataSpec.prompt_template`):
- "none": the prompt as is. A context is appended after the prompt, separated by a blank line
  (instruction first, then its input, as in Alpaca/Dolly prompts). A chat record uses its plain-text conversation.
- "chat": the tokenizer's own chat template with `add_generation_prompt=True`. A chat record passes its
  conversation; a prompt/response record becomes one user turn (prompt and context joined as for "none").
- a format string with `{prompt}` and optionally `{context}`. Without a `{context}` placeholder, a record's context
  is joined into `{prompt}` as for "none", so no context is dropped; with it, a missing context fills in "".
"""

from __future__ import annotations

from typing import Any

from dskd_core.data.records import DataError, Record


def prompt_with_context(record: Record) -> str:
    """The prompt with its context appended (the prompt alone when there is no context)."""
    if record.context and record.context.strip():
        return f"{record.prompt}\n\n{record.context}"
    return record.prompt


def format_prompt(record: Record, template: str, tokenizer: Any = None) -> str:
    """The prompt text for `record` under `template` (the tokenizer is needed only for "chat")."""
    if template == "none":
        return prompt_with_context(record)
    if template == "chat":
        return _render_chat(record, tokenizer)
    if "{context}" in template:
        return template.format(prompt=record.prompt, context=record.context or "")
    return template.format(prompt=prompt_with_context(record))


def _render_chat(record: Record, tokenizer: Any) -> str:
    if tokenizer is None:
        raise ValueError("the 'chat' prompt template needs a tokenizer")
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise DataError(
            f"the tokenizer '{name}' has no chat template; set data.prompt_template to 'none' or a format string"
        )
    messages = record.messages or [{"role": "user", "content": prompt_with_context(record)}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
