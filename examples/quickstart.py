"""Quickstart on the embedded digits model (offline): erase a concept, save it, load it two ways.

python examples/quickstart.py
"""

import tempfile

import torch

import diffusers_unlearn
from diffusers_unlearn import digits
from diffusers_unlearn.digits.concepts import Concept


def main() -> None:
    pipe = digits.load_pipeline()

    # 1. Erase "seven" (and its numeral "7"); protect the other digits. Takes well under a second here.
    adapter = diffusers_unlearn.erase(pipe, **Concept(7).erase_kwargs())
    print("chosen targets:", [(r["context"], r["target"]) for r in adapter.metadata["targets"][:3]])
    print("figures:", {k: round(v, 3) for k, v in adapter.metadata["figures"].items()})

    with tempfile.TemporaryDirectory() as folder:
        # 2. Save: a plain diffusers LoRA folder with our provenance beside it.
        adapter.save_pretrained(folder)

        # 3. Load with diffusers-unlearn: checked, verified, reversible.
        pipe.load_unlearning(folder)
        print("loaded:", pipe.unlearning)
        ours = pipe("a red seven", num_inference_steps=20, generator=torch.manual_seed(0), output_type="np").images
        pipe.unload_unlearning()

        # 4. ...or with vanilla diffusers: the same images.
        pipe.load_lora_weights(folder)
        plain = pipe("a red seven", num_inference_steps=20, generator=torch.manual_seed(0), output_type="np").images
        print("same images with vanilla load_lora_weights:", bool((ours == plain).all()))


if __name__ == "__main__":
    main()
