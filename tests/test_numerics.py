"""fp16 / bf16 pipelines: solves run in fp32, results are cast; fused low-precision stacks stay close to fp32."""

import pytest
import torch
from conftest import make_sd_pipeline

import diffusers_unlearn as du
from diffusers_unlearn.distance import PromptBank
from diffusers_unlearn.families import family_of

pytestmark = pytest.mark.random_targets  # see conftest.py


def unet_output(pipe, prompt: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    embeds = PromptBank(pipe, family_of(pipe)).embeds(prompt)[None].expand(2, -1, -1)
    with torch.no_grad():
        unet = pipe.unet
        return unet(
            latents.to(unet.dtype), torch.tensor([500, 100]), encoder_hidden_states=embeds.to(unet.dtype)
        ).sample.float()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_pipelines(dtype):
    full = make_sd_pipeline()
    low = make_sd_pipeline().to(dtype=dtype)
    same_base = du.pipeline.base_fingerprint(low) == du.pipeline.base_fingerprint(full)
    # the fingerprint hashes fp16-rounded weights: an fp16 copy of the checkpoint is the same base; a bf16 copy has
    # lost bits fp16 keeps, so removals for it are made on it (a documented limit)
    assert same_base == (dtype == torch.float16)

    made_low = du.erase(low, "cat", neighbors=["dog"])
    made_full = du.erase(full, "cat", neighbors=["dog"])
    assert all(t.dtype == torch.float32 for t in made_low.lora_weights.values())  # solved in fp32
    for layer in made_full.layer_names:  # the same removal, up to the embeddings' rounding
        error = (made_low.delta(layer) - made_full.delta(layer)).norm() / made_full.delta(layer).norm()
        assert error < 0.05, (layer, float(error))

    full.load_unlearning([made_full, du.erase(full, "tree")], mode="fused")
    low_stack = [made_full, du.erase(full, "tree")] if same_base else [made_low]
    if not same_base:
        with pytest.raises(du.BaseModelMismatchError):
            low.load_unlearning(made_full)
        low.load_unlearning(made_low)
        low_stack.append(du.erase(low, "tree"))
        low.unload_unlearning()
    low.load_unlearning(low_stack, mode="fused")  # cast into the low-precision weights
    assert all(u.verified for u in low.unlearning)
    reference, result = unet_output(full, "a photo of a cat"), unet_output(low, "a photo of a cat")
    relative = (result - reference).norm() / reference.norm()
    assert relative < (0.01 if dtype == torch.float16 else 0.05), float(relative)  # measured 0.006 / 0.013
    low.unload_unlearning()
    assert low.unet.dtype == dtype and low.unlearning == ()
