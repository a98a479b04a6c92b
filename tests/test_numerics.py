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
    found_full, found_low = du.pipeline.base_fingerprints(full), du.pipeline.base_fingerprints(low)
    # an fp16 copy of the checkpoint hashes the same rounded to float16, a bf16 copy rounded to bfloat16 (a weight
    # rounded to fp16 and then bf16 can land on another bf16 value than the weight itself: only one of them matches)
    assert (found_low["base_fingerprint"] == found_full["base_fingerprint"]) == (dtype == torch.float16)
    assert (found_low["base_fingerprint_bf16"] == found_full["base_fingerprint_bf16"]) == (dtype == torch.bfloat16)

    made_low = du.erase(low, "cat", neighbors=["dog"])
    made_full = du.erase(full, "cat", neighbors=["dog"])
    assert all(t.dtype == torch.float32 for t in made_low.lora_weights.values())  # solved in fp32
    for layer in made_full.layer_names:  # the same removal, up to the embeddings' rounding
        error = (made_low.delta(layer) - made_full.delta(layer)).norm() / made_full.delta(layer).norm()
        assert error < 0.05, (layer, float(error))
    full.load_unlearning(made_low)  # a removal made on the low-precision copy loads on the full one, and back
    assert all(u.verified for u in full.unlearning)
    full.unload_unlearning()

    full.load_unlearning([made_full, du.erase(full, "tree")], mode="fused")
    low_stack = [made_full, du.erase(full, "tree")]
    low.load_unlearning(low_stack, mode="fused")  # cast into the low-precision weights
    assert all(u.verified for u in low.unlearning)
    reference, result = unet_output(full, "a photo of a cat"), unet_output(low, "a photo of a cat")
    relative = (result - reference).norm() / reference.norm()
    assert relative < (0.01 if dtype == torch.float16 else 0.05), float(relative)  # measured 0.006 / 0.013
    low.unload_unlearning()
    assert low.unet.dtype == dtype and low.unlearning == ()


def test_float16_and_bfloat16_copies_of_a_float32_checkpoint_are_told_apart():
    """They round weights differently: a removal made on one is refused by the other, with what to do instead."""
    half, bfloat = make_sd_pipeline().to(dtype=torch.float16), make_sd_pipeline().to(dtype=torch.bfloat16)
    made_half = du.erase(half, "cat", neighbors=["dog"])
    with pytest.raises(du.BaseModelMismatchError, match="made on a float32 pipeline loads on both"):
        bfloat.load_unlearning(made_half)
    assert bfloat.unlearning == () and not du.pipeline.loaded_adapters(bfloat)
    stack = du.UnlearningStack([made_half])
    with pytest.raises(du.BaseModelMismatchError, match="made for base weights"):
        stack.append(du.erase(bfloat, "cat", neighbors=["dog"], name="no-cat-bf16"))


def test_a_chain_made_on_float32_and_bfloat16_copies_saves_loads_and_merges(tmp_path):
    """The second removal matches the first at bfloat16 only: the chain, its manifest and a merge accept it."""
    full, bfloat = make_sd_pipeline(), make_sd_pipeline().to(dtype=torch.bfloat16)
    stack = du.UnlearningStack([du.erase(full, "cat", neighbors=["dog"])])
    stack.append(du.erase(bfloat, "tree", neighbors=["dog"]))
    assert stack.adapters[0].base_fingerprint != stack.adapters[1].base_fingerprint
    stack.save_pretrained(tmp_path)
    loaded = du.UnlearningStack.from_pretrained(tmp_path)
    assert loaded.names == ["no-cat", "no-tree"]
    merged = loaded.merge()
    assert merged.metadata["base_fingerprint_bf16"] == loaded.adapters[0].metadata["base_fingerprint_bf16"]
    for pipe in (full, bfloat):
        pipe.load_unlearning(merged, mode="fused")
        assert all(u.verified for u in pipe.unlearning)
        pipe.unload_unlearning()
