"""Facts about a pretrained base model, read from its files: its tokenizer (with a pad token), the dtype its weights
are stored in, its context length and end-of-sequence ids, and the name of a pre-quantized upload's 16-bit twin.

Training, generation, `merge` and `plan` all ask here, so they agree on a model.

Example:
    >>> model_key("unsloth/Qwen2.5-Math-1.5B-bnb-4bit")
    'qwen2.5-math-1.5b'
"""

from __future__ import annotations

from typing import Any

from lowrank_rlvr.errors import UserError, first_line

MAX_CONTEXT = 32768  # generation never reserves room for longer sequences (a 3072-token evaluation needs no 128k)
# Name suffixes of pre-quantized bitsandbytes uploads (Unsloth's mirrors): the name without them is the 16-bit model.
PREQUANTIZED_SUFFIXES = ("-unsloth-bnb-4bit", "-bnb-4bit", "-bnb-8bit")


def is_prequantized(name_or_path: str) -> bool:
    return str(name_or_path).rstrip("/").lower().endswith(PREQUANTIZED_SUFFIXES)


def sixteen_bit_name(name_or_path: str) -> str:
    """'unsloth/Qwen2.5-Math-1.5B-bnb-4bit' -> 'unsloth/Qwen2.5-Math-1.5B'; any other name as it is."""
    for suffix in PREQUANTIZED_SUFFIXES:
        if name_or_path.lower().endswith(suffix):
            return name_or_path[: -len(suffix)]
    return name_or_path


def model_key(name_or_path: str) -> str:
    """The model a name or folder means, case and pre-quantization aside: the last part of the id, lowercased.

    'Qwen/Qwen2.5-Math-1.5B', 'unsloth/qwen2.5-math-1.5b-bnb-4bit', '/models/Qwen2.5-Math-1.5B' -> 'qwen2.5-math-1.5b'.
    """
    return sixteen_bit_name(str(name_or_path).rstrip("/").rsplit("/", 1)[-1]).lower()


def load_tokenizer(model_path: str, shown: str | None = None, padding_side: str | None = None) -> Any:
    """The model's tokenizer with a pad token (its end-of-sequence token when it has none); `padding_side` 'left'
    for batched generation."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except OSError as exc:
        raise UserError(f"model {shown or model_path!r} could not be loaded: {first_line(exc)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    return tokenizer


def stored_dtype(model_path: str) -> str:
    """The dtype the checkpoint's weights are stored in (config.json), e.g. 'bfloat16'."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    return str(dtype).removeprefix("torch.")


def context_length(model_path: str) -> int:
    """Tokens of prompt + response one sequence may hold: the model's positions, capped at MAX_CONTEXT."""
    from transformers import AutoConfig

    return min(int(AutoConfig.from_pretrained(model_path).max_position_embeddings), MAX_CONTEXT)


def eos_ids(model_path: str, tokenizer: Any) -> set[int]:
    """The ids that end a response: the generation config's, else the tokenizer's end-of-sequence token."""
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
    except OSError:  # no generation_config.json
        eos = None
    eos = tokenizer.eos_token_id if eos is None else eos
    return set(eos) if isinstance(eos, (list, tuple)) else {eos}
