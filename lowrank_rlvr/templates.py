"""Prompt templates: the text a model sees before its answer. One function serves training, evaluation, `select
--estimate` and the model card, so a model is asked in the format it was trained on.

- `qwen-math-cot`: Qwen2.5-Math's system prompt "Please reason step by step, and put your final answer within
  \\boxed{}." in ChatML (the paper's template, our default);
- `chat`: the tokenizer's own chat template, the problem as the one user turn;
- `plain`: raw text for base models without a chat format.

Example:
    >>> render_prompt("What is 1+1?", "plain")
    "Question: What is 1+1?\\nAnswer: Let's think step by step."
"""

from __future__ import annotations

from typing import Any

from lowrank_rlvr.errors import UserError

TEMPLATES = ("qwen-math-cot", "chat", "plain")
DEFAULT_TEMPLATE = "qwen-math-cot"
QWEN_MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def render_prompt(problem: str, template: str, tokenizer: Any = None) -> str:
    """The prompt for `problem` in `template` ('chat' needs the tokenizer whose template it is)."""
    if template == "qwen-math-cot":
        return (
            f"<|im_start|>system\n{QWEN_MATH_SYSTEM}<|im_end|>\n"
            f"<|im_start|>user\n{problem}<|im_end|>\n<|im_start|>assistant\n"
        )
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise UserError("template 'chat' needs a tokenizer with a chat template (use 'plain' for base models)")
        messages = [{"role": "user", "content": problem}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if template == "plain":
        return f"Question: {problem}\nAnswer: Let's think step by step."
    raise UserError(f"unknown template {template!r} (choose {', '.join(TEMPLATES)})")
