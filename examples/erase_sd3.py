"""Erase a concept from Stable Diffusion 3 / 3.5 — for users with a GPU and Hub access (not run in CI).

    python examples/erase_sd3.py --concept "Van Gogh" --neighbors Monet Cezanne "Claude Monet"
    python examples/erase_sd3.py --model stabilityai/stable-diffusion-3.5-large --offload
    python examples/erase_sd3.py --concept "Van Gogh" --method distill          # LACU-style distillation

The closed-form removal is one LoRA on `transformer.context_embedder` (4096 -> 1536 for SD3 medium, -> 2432 for
3.5 large: the only way the CLIP + T5 text embedding enters the transformer) plus one on the pooled-CLIP input
`time_text_embed.text_embedder.linear_1` (2048 -> 1536 / 2432), loadable with plain `pipe.load_lora_weights(folder)`.
It is made at the T5 length the pipeline uses by default (256 tokens; `--max-sequence-length`). The text
sequence is CLIP's 77 tokens then T5's: forget prompts may run past CLIP's 77 tokens (CLIP is truncated, as the
pipeline does) up to T5's length. `--method distill` trains a LoRA on the joint attention's text-stream inputs
(`attn.add_k_proj` / `attn.add_v_proj`).

Time and memory per removal on a GPU are not measured yet: no GPU was lent to the session that wrote this (the
script prints both; please report them). The shapes that matter are measured on CPU in
docs/benchmarks/erase_speed.md (the solve at d = 4096).
"""

from erase_flux import main  # the same script; only the default model and T5 length differ

if __name__ == "__main__":
    main(default_model="stabilityai/stable-diffusion-3-medium-diffusers", default_length=256, description=__doc__)
