"""A LoRA adapter folder, described once: read and checked before anything is loaded, then asked for what each
command needs (its rank, its target modules, its base, whether vLLM can serve it, its LoRA tensors).

peft writes `adapter_config.json` beside `adapter_model.safetensors`; without `peft_type`, `r` and `target_modules`
peft silently falls back to defaults (r=8, the model type's default targets) and loads whatever part of the weights
happens to fit, so an adapter lacking them is refused here.

Example:
    >>> adapter = read_adapter(Path("runs/tiny/adapter"))
    >>> adapter.rank, adapter.vllm_unsupported
    (16, ['lm_head'])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lowrank_rlvr.errors import UserError
from lowrank_rlvr.files import check_safetensors, read_json_object

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # what peft needs to load an adapter
REQUIRED_KEYS = ("peft_type", "r", "target_modules")
# vLLM's LoRA (vllm 0.30-0.32): the ranks its max_lora_rank accepts (Unsloth rounds max_lora_rank up to one of
# these), and the modules it cannot serve an adapter on (it covers the attention and MLP projections only).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_LORA_UNSUPPORTED = ("lm_head", "embed_tokens")


@dataclass(frozen=True)
class Adapter:
    path: Path  # the folder, resolved
    config: dict  # adapter_config.json as peft wrote it

    @property
    def rank(self) -> int:
        """The largest rank of any module (peft's `rank_pattern` may raise some above `r`)."""
        return int(max([self.config["r"], *(self.config.get("rank_pattern") or {}).values()]))

    @property
    def target_modules(self) -> list[str]:
        targets = self.config.get("target_modules") or []
        return [targets] if isinstance(targets, str) else list(targets)

    @property
    def base(self) -> str | None:
        """The base model peft recorded (`base_model_name_or_path`)."""
        return self.config.get("base_model_name_or_path")

    @property
    def vllm_unsupported(self) -> list[str]:
        """Modules vLLM's LoRA does not cover: lm_head, the embeddings, fully trained modules (`modules_to_save`)."""
        names = [t for t in self.target_modules if any(word in t for word in VLLM_LORA_UNSUPPORTED)]
        return sorted(set(names + list(self.config.get("modules_to_save") or [])))

    @property
    def weights(self) -> Path:
        return self.path / "adapter_model.safetensors"

    def lora_tensor_names(self) -> set[str]:
        """The names of the LoRA A and B tensors in the weights file."""
        from safetensors import safe_open

        with safe_open(self.weights, framework="pt") as handle:
            return {key for key in handle.keys() if ".lora_A." in key or ".lora_B." in key}


def read_adapter(adapter_dir: str | Path) -> Adapter:
    """The adapter in `adapter_dir`, checked: a JSON object naming a LORA adapter with its rank and target modules,
    beside readable safetensors weights (UserError naming the folder and the fault otherwise)."""
    adapter_dir = Path(adapter_dir).expanduser()
    if not adapter_dir.exists():
        raise UserError(f"adapter folder not found: {adapter_dir}")
    if not adapter_dir.is_dir():
        raise UserError(f"{adapter_dir}: adapter is a file, expected a folder (RUN/adapter or RUN/checkpoint-N)")
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.exists():
        raise UserError(f"{adapter_dir}: no adapter_config.json (expected RUN/adapter or RUN/checkpoint-N)")
    config = read_json_object(config_path, "adapter config")
    missing = [key for key in REQUIRED_KEYS if key not in config]
    if missing:
        raise UserError(f"{config_path}: adapter config lacks {', '.join(map(repr, missing))} (not written by peft?)")
    if config["peft_type"] != "LORA":
        raise UserError(f"{config_path}: peft_type {config['peft_type']!r} is not LORA")
    if not isinstance(config["r"], int) or isinstance(config["r"], bool) or config["r"] < 1:
        raise UserError(f"{config_path}: r must be a positive integer (got {config['r']!r})")
    if not (adapter_dir / "adapter_model.safetensors").exists() and (adapter_dir / "adapter_model.bin").exists():
        raise UserError(f"{adapter_dir}: no adapter_model.safetensors next to adapter_config.json (a legacy .bin adapter)")
    check_safetensors(adapter_dir / "adapter_model.safetensors", "adapter weights")
    return Adapter(adapter_dir.resolve(), config)
