"""`lowrank-rlvr` with the sampler's weight sync deliberately broken: the fault tests/test_train_vllm.py injects.

    .venv-vllm/bin/python tests/faults/broken_sync.py {stale|double_scale} train CONFIG --output-dir DIR ...

The one place TRL pushes the trained weights into its colocated vLLM engine is `VLLMGeneration.sync_weights`
(trl 1.14.2, trl/generation/vllm_generation.py: with peft it merges the adapter, loads every weight into the engine
with `model.load_weights`, and unmerges). Only that method is replaced; the CLI, the trainer, vLLM and the guard run
as shipped.
- `stale`: the sync does nothing, so the sampler keeps serving the initial weights (the base: peft starts LoRA at B=0).
- `double_scale`: the adapter is merged at twice its LoRA scale (alpha / r) for the push, as a sync that applies the
  scale twice would (the trainer's own weights are untouched).
"""

from __future__ import annotations

import sys


def break_sync(fault: str) -> None:
    from trl.generation.vllm_generation import VLLMGeneration

    original = VLLMGeneration.sync_weights

    def stale(self):
        return None

    def double_scale(self):
        layers = [m for m in self.model.modules() if isinstance(getattr(m, "scaling", None), dict)]
        for layer in layers:
            layer.scaling = {name: 2 * value for name, value in layer.scaling.items()}
        try:
            original(self)
        finally:
            for layer in layers:
                layer.scaling = {name: value / 2 for name, value in layer.scaling.items()}

    VLLMGeneration.sync_weights = {"stale": stale, "double_scale": double_scale}[fault]


if __name__ == "__main__":  # vLLM's engine workers need the guard
    fault = sys.argv.pop(1)
    break_sync(fault)
    from lowrank_rlvr.cli import main

    sys.argv[0] = "lowrank-rlvr"
    main()
