"""A tiny Qwen2 built on this machine: the offline stand-in for a real base model (tests, CPU demo).

A *random* tiny model never writes `\\boxed{...}`, so its reward stays 0 and GRPO has nothing to learn from. We
therefore give it the paper's precondition, latent ability, in miniature: a short supervised warm start on synthetic
chats "What is a+b?" -> "The answer is \\boxed{c}." where c is a random number (not the sum). The model learns the
template and the answer format but not arithmetic; one-shot GRPO on a single prompt then has to find and reinforce
the right answer from rare lucky samples: a real RL signal.

The tokenizer is a byte-level BPE trained in-process with `tokenizers` (digits split one by one, as Qwen's), so any
text (benchmarks included) can be encoded. Hidden size 128 / head dim 32 keeps vLLM's CPU backend happy.
`builtin.py` caches the result by `RECIPE_VERSION`.
"""

from __future__ import annotations

import random
from pathlib import Path

from lowrank_rlvr.templates import render_prompt

RECIPE_VERSION = "v2"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WARM_START_STEPS = 400


def addition_chat(a: int, b: int, c: int) -> tuple[str, str]:
    """One synthetic (prompt, completion) pair in the Qwen2.5-Math CoT template."""
    prompt = render_prompt(f"What is {a}+{b}?", "qwen-math-cot")
    return prompt, f"The answer is \\boxed{{{c}}}.<|im_end|>"


def build_tiny_model(out_dir: Path, seed: int = 0) -> None:
    """Build the tiny model into `out_dir`. `seed` (the build seed) draws the tokenizer corpus, the initial weights and
    the warm-start batches; 0 is the cached model's. Another build seed gives another warm-started model, which is how
    scripts/bench_tiny_seeds.py stands in for another machine's numerics."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    rng = random.Random(seed)
    torch.manual_seed(seed)

    corpus = ["".join(addition_chat(rng.randint(10, 49), rng.randint(10, 49), rng.randint(10, 99))) for _ in range(2000)]
    corpus += [render_prompt("Find x such that 2x+3=7. Let's think step by step.", "plain")]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=512, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE
    )

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,  # head dim 32
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,  # an adapter on lm_head then merges without touching the input embeddings
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    _warm_start(model, tokenizer, rng)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _warm_start(model, tokenizer, rng: random.Random, batch_size: int = 32) -> None:
    """Supervised steps on the completion tokens only: teach the format, not the sums."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(WARM_START_STEPS):
        pairs = [addition_chat(rng.randint(10, 49), rng.randint(10, 49), rng.randint(10, 99)) for _ in range(batch_size)]
        prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p, _ in pairs]
        full_ids = [tokenizer(p + c, add_special_tokens=False)["input_ids"] for p, c in pairs]
        width = max(map(len, full_ids))
        input_ids = torch.full((batch_size, width), tokenizer.pad_token_id)  # [B, L]
        labels = torch.full((batch_size, width), -100)  # [B, L]; -100: no loss (prompt, padding)
        attention = torch.zeros((batch_size, width), dtype=torch.long)
        for row, (p_ids, ids) in enumerate(zip(prompt_ids, full_ids)):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, len(p_ids) : len(ids)] = torch.tensor(ids[len(p_ids) :])
            attention[row, : len(ids)] = 1
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
