"""lowrank-rlvr: one-shot RLVR (GRPO on a single math example) with low-rank adapters on one GPU.

Importing the package loads nothing heavy; GPU-only libraries (Unsloth, CUDA vLLM) are imported only where used.
"""

__version__ = "0.1.0"
