"""SD3 and FLUX.1 as family-table entries: erase, every load mode, vanilla loading, the stack, Hub and export.

Tiny pipelines built offline from config (`conftest.make_sd3_pipeline` / `make_flux_pipeline`), two inference
steps at 8 x 8 pixels; one pipeline and one removal per family for the whole module.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import generate_transformer, make_flux_pipeline, make_sd3_pipeline
from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers
from hub_server import HubServer
from huggingface_hub import constants
from safetensors.torch import load_file

import diffusers_unlearn as du
from diffusers_unlearn.distance import PromptBank, score_distances
from diffusers_unlearn.errors import InvalidConceptError, UnsupportedPipelineError
from diffusers_unlearn.export import export_kohya
from diffusers_unlearn.families import FLUX, STABLE_DIFFUSION_3, family_of
from diffusers_unlearn.prompts import align

pytestmark = pytest.mark.random_targets  # see conftest.py

PROMPT = "a photo of cat"
PRESERVE = ["a photo of dog", "a photo of tree", "a painting of a house"]
TEMPLATES = ["a photo of {}", "a painting of {}", "{} on a grassy hill"]
FAMILY_NAMES = ["sd3", "flux"]
MAKERS = {"sd3": make_sd3_pipeline, "flux": make_flux_pipeline}


@pytest.fixture(scope="module")
def made():
    """Per family: the pipeline, its removal of "cat" (closed form), a second removal ("dog") made on top of it,
    and the base image. Protection through `preserve` prompts: neighbours would also be scored against the mapping
    targets, a check that random tiny models are too noisy for (tests/test_targets.py covers it)."""
    out = {}
    for name, make in MAKERS.items():
        pipe = make()
        cat = du.erase(pipe, "cat", templates=TEMPLATES, mapping_candidates=["rabbit"], preserve=PRESERVE)
        pipe.load_unlearning(cat)
        dog = du.erase(pipe, "dog", templates=TEMPLATES, mapping_candidates=["horse"], preserve=PRESERVE[1:])
        pipe.unload_unlearning()
        out[name] = SimpleNamespace(pipe=pipe, cat=cat, dog=dog, base=generate_transformer(pipe, PROMPT))
    return out


def test_family_table_entries():
    assert family_of(make_sd3_pipeline()) is STABLE_DIFFUSION_3 and family_of(make_flux_pipeline()) is FLUX
    for family in (STABLE_DIFFUSION_3, FLUX):
        assert family.denoiser == "transformer" and family.edited_suffixes == ("context_embedder",)
        assert family.pooled_layer == "time_text_embed.text_embedder.linear_1"


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_the_removal_is_a_remap_of_the_text_embedding_read_by_context_embedder(made, name):
    """The premise: the LoRA on `context_embedder` acts as `c -> c + G c` on the text embedding, everywhere."""
    case = made[name]
    pipe, family = case.pipe, family_of(case.pipe)
    assert case.cat.layer_names == ["context_embedder", family.pooled_layer]
    bank = PromptBank(pipe, family)
    embeds, pooled = bank.embeds(PROMPT)[None], bank.pooled(PROMPT)[None]
    generator = torch.Generator().manual_seed(0)
    latents, timesteps = family.random_latents(pipe, 1, generator), torch.tensor([500])
    remap = case.cat.probes["remap_up"] @ case.cat.probes["remap_down"]
    with torch.no_grad():
        pipe.load_unlearning(case.cat)
        edited = family.denoise(pipe, pipe.transformer, latents, timesteps, embeds, pooled)
        pipe.unload_unlearning()
        # the same pooled LoRA, but the sequence edit done on the embeddings instead of the layer
        pooled_only = du.UnlearningAdapter(
            {k: v for k, v in case.cat.lora_weights.items() if "context_embedder" not in k},
            {**case.cat.metadata, "name": "pooled-only"},
        )
        pipe.load_unlearning(pooled_only)
        remapped = family.denoise(pipe, pipe.transformer, latents, timesteps, embeds + embeds @ remap.T, pooled)
        pipe.unload_unlearning()
        base = family.denoise(pipe, pipe.transformer, latents, timesteps, embeds, pooled)
    assert (edited - base).abs().max() > 1e-3
    assert torch.allclose(edited, remapped, atol=1e-5), (edited - remapped).abs().max()


@pytest.mark.parametrize("mode", ["adapters", "merged", "fused"])
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_vanilla_load_lora_weights_gives_the_same_images_as_every_load_mode(made, name, mode, tmp_path):
    case = made[name]
    pipe = case.pipe
    folder = case.cat.save_pretrained(tmp_path / "no-cat")
    pipe.load_lora_weights(folder)  # plain diffusers, no plugin involved
    assert pipe.get_list_adapters() == {"transformer": ["default_0"]}
    vanilla = generate_transformer(pipe, PROMPT)
    pipe.unload_lora_weights()
    assert np.abs(vanilla - case.base).max() > 1e-3  # the removal changes the image

    loaded = pipe.load_unlearning(folder, mode=mode)
    assert [u.mode for u in loaded] == [mode] and all(u.verified for u in loaded)
    image = generate_transformer(pipe, PROMPT)
    pipe.unload_unlearning()
    assert np.allclose(image, vanilla, atol=1e-6 if mode != "fused" else 1e-4), np.abs(image - vanilla).max()
    assert np.array_equal(generate_transformer(pipe, PROMPT), case.base)  # unloading restores the model exactly


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_pooled_path_is_edited_so_the_concept_does_not_leak_back(made, name):
    """Measured as SDXL's (docs/method.md §4): the forget-to-target noise-prediction gap with the sequence edit
    alone, and with the pooled edit too."""
    case = made[name]
    pipe, adapter = case.pipe, case.cat
    assert adapter.metadata["figures"]["pooled_forget_residual"] < 0.6  # measured 0.02 (SD3), 0.02 (FLUX)
    sequence_only = du.UnlearningAdapter(
        {k: v for k, v in adapter.lora_weights.items() if "time_text_embed" not in k},
        {**adapter.metadata, "name": "sequence-only"},
    )
    pairs = [(r["context"].replace("{}", "cat").strip(), r["target"]) for r in adapter.metadata["targets"]]

    def gap_to_targets():
        return score_distances(PromptBank(pipe, family_of(pipe)), pairs, samples=8).mean()

    before = gap_to_targets()
    pipe.load_unlearning(sequence_only)
    after_sequence = gap_to_targets()
    pipe.unload_unlearning()
    pipe.load_unlearning(adapter)
    after_both = gap_to_targets()
    pipe.unload_unlearning()
    # measured (before, sequence edit alone, both): SD3 (0.141, 0.149, 0.0014), FLUX (0.0224, 0.0225, 0.0002): on
    # these random transformers the pooled vector carries almost all of the prompt's effect (docs/method.md §4)
    assert after_both < 0.75 * min(before, after_sequence), (before, after_sequence, after_both)


def test_t5_alignment_pairs_every_position_and_long_prompts(made):
    # a bidirectional encoder: the shared prefix is paired too ("a photo of" differs between the two prompts)
    a, b = [5, 6, 7, 9, 1], [5, 6, 7, 1]
    assert align(a, b, 8, causal=True)[0] == list(range(3, 8))
    positions_a, positions_b = align(a, b, 8, causal=False)
    assert positions_a == list(range(8)) and positions_b == [0, 1, 2, 2, 3, 4, 5, 6]  # "9" pairs with "7"

    pipe = made["sd3"].pipe
    family = family_of(pipe)
    clip_length, t5_length = pipe.tokenizer.model_max_length, pipe.tokenizer_3.model_max_length
    long_prompt = "a detailed illustration of cat " + "on a grassy hill with a tree " * 12  # > 77 tokens
    ids = family.token_ids(pipe, long_prompt)
    assert len(ids[0]) == clip_length < 77 < len(ids[1]) <= t5_length  # CLIP truncated as the pipeline does
    positions, _ = family.align(pipe, ids, family.token_ids(pipe, long_prompt.replace("cat ", "")))
    assert positions[0] < clip_length and positions[-1] == clip_length + t5_length - 1
    anchor = long_prompt.replace("cat", "rabbit")
    adapter = du.erase(pipe, "cat", prompts=[long_prompt], anchor=anchor)
    assert adapter.metadata["figures"]["forget_residual"] < 0.9
    with pytest.raises(InvalidConceptError, match="max_sequence_length"):
        du.erase(pipe, "cat", prompts=[long_prompt * 3], anchor=anchor)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_stack_check_merges_and_withdrawal(made, name):
    case = made[name]
    pipe, cat, dog = case.pipe, case.cat, case.dog
    stack = du.UnlearningStack([cat, dog])
    assert stack.check(pipe).passed  # dog was made on top of cat
    concat = stack.merge("concat")
    joint = stack.merge("joint", pipe=pipe)
    pipe.load_unlearning(stack)
    chained = generate_transformer(pipe, PROMPT)
    pipe.unload_unlearning()
    pipe.load_unlearning(concat)
    assert np.allclose(generate_transformer(pipe, PROMPT), chained, atol=1e-5)  # concat is exact
    pipe.unload_unlearning()
    assert set(joint.layer_names) == set(cat.layer_names)
    assert stack.remove(cat.name, pipe=pipe) is cat  # dog, made on top, is re-solved without cat underneath
    resolved = stack[dog.name]
    assert stack.names == [dog.name] and resolved.metadata["resolved"]["withdrawn"] == cat.name
    for layer in dog.layer_names:
        assert not torch.allclose(resolved.delta(layer), dog.delta(layer), rtol=1e-3)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_hub_push_then_load_unlearning_from_the_repo(made, name, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    case = made[name]
    with HubServer(tmp_path / "hub") as server:
        kw = {"endpoint": server.url, "token": "hf_test"}
        du.UnlearningStack([case.cat, case.dog]).push_to_hub(f"org/{name}-removals", **kw)
        loaded = case.pipe.load_unlearning(f"org/{name}-removals", **kw)
        assert [u.name for u in loaded] == ["no-cat", "no-dog"] and all(u.verified for u in loaded)
        case.pipe.unload_unlearning()
    assert server.errors == []


def test_kohya_export_uses_the_original_flux_names_and_sd3_says_what_to_use(made, tmp_path):
    flux = made["flux"]
    path = export_kohya(flux.cat, tmp_path / "no-cat.safetensors")
    assert {k.split(".")[0] for k in load_file(path)} == {"lora_unet_txt_in", "lora_unet_vector_in_in_layer"}
    # diffusers' own FLUX kohya conversion maps the names back (0.42 drops their `transformer.` prefix on the way,
    # so `load_lora_weights` of this file skips these two layers: see docs/reference.md)
    converted = _convert_kohya_flux_lora_to_diffusers(load_file(path))
    for layer in flux.cat.layer_names:
        delta = converted[f"{layer}.lora_B.weight"].float() @ converted[f"{layer}.lora_A.weight"].float()
        torch.testing.assert_close(delta, flux.cat.delta(layer), rtol=2e-3, atol=2e-3)  # fp16 tensors in the file
    with pytest.raises(UnsupportedPipelineError, match="no kohya export"):
        export_kohya(made["sd3"].cat, tmp_path / "sd3.safetensors")


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_distill_trains_the_joint_attention_text_inputs_and_loads_vanilla(made, name, tmp_path):
    pipe = made[name].pipe
    config = du.DistillConfig(steps=3, batch_size=2, latent_pool=2, sampling_steps=2)
    adapter = du.erase(
        pipe, "cat", templates=["a photo of {}"], mapping_candidates=["rabbit"], method="distill", config=config
    )  # fmt: skip
    assert adapter.layer_names and all(n.endswith(("attn.add_k_proj", "attn.add_v_proj")) for n in adapter.layer_names)
    assert np.isfinite(adapter.metadata["figures"]["forget_residual"])
    pipe.load_unlearning(adapter)
    image = generate_transformer(pipe, PROMPT)
    pipe.unload_unlearning()
    pipe.load_lora_weights(adapter.save_pretrained(tmp_path / "distilled"))
    assert np.allclose(generate_transformer(pipe, PROMPT), image, atol=1e-6)
    pipe.unload_lora_weights()
