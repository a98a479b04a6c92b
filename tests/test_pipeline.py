"""`pipe.load_unlearning` / `unload_unlearning` / `unlearning`: verified, all-or-nothing, reversible."""

import copy
import inspect
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import generate, make_sd_pipeline
from synthetic import synthetic_removal

import diffusers_unlearn as du

PROMPT = "a photo of a cat"


def weights(pipe):
    return {k: v.detach().clone() for k, v in pipe.unet.state_dict().items()}


def assert_same_weights(pipe, reference):
    current = pipe.unet.state_dict()
    assert current.keys() == reference.keys()
    assert all(torch.equal(current[k], reference[k]) for k in reference)


@pytest.fixture
def removals(sd_pipe):
    """Two removals recorded for `sd_pipe` (synthetic factors: loading does not depend on how they were made)."""
    return synthetic_removal(sd_pipe, "cat", seed=1), synthetic_removal(sd_pipe, "dog", seed=5)


def test_methods_added_without_replacing_diffusers():
    script = (
        "from diffusers import DiffusionPipeline as P\n"
        "before = dict(vars(P))\n"
        "import diffusers_unlearn\n"
        "after = dict(vars(P))\n"
        "assert all(after[k] is v for k, v in before.items()), 'something was replaced'\n"
        "print(sorted(set(after) - set(before)))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "['load_unlearning', 'unlearning', 'unload_unlearning']"


@pytest.mark.parametrize("mode", ["adapters", "merged", "fused"])
def test_load_then_unload_restores_the_exact_model(sd_pipe, removals, mode):
    reference, base_image = weights(sd_pipe), generate(sd_pipe, PROMPT)
    loaded = sd_pipe.load_unlearning(list(removals), mode=mode)
    if mode == "merged":  # one PEFT adapter holding both removals
        assert [(e.name, e.members) for e in loaded] == [("merged-2-removals", ("no-cat", "no-dog"))]
        assert sd_pipe.get_list_adapters() == {"unet": ["merged-2-removals"]}
    else:
        assert [(e.name, e.members) for e in loaded] == [("no-cat", ("no-cat",)), ("no-dog", ("no-dog",))]
    assert all(entry.verified and entry.mode == mode for entry in loaded)
    assert not np.array_equal(generate(sd_pipe, PROMPT), base_image)
    sd_pipe.unload_unlearning()
    assert sd_pipe.unlearning == ()
    assert_same_weights(sd_pipe, reference)
    assert np.array_equal(generate(sd_pipe, PROMPT), base_image)


def test_the_three_modes_give_the_same_images(sd_pipe, removals):
    sd_pipe.load_unlearning(list(removals))
    unfused = generate(sd_pipe, PROMPT)
    for mode in ("merged", "fused"):
        sd_pipe.unload_unlearning()
        sd_pipe.load_unlearning(list(removals), mode=mode)
        assert np.allclose(generate(sd_pipe, PROMPT), unfused, atol=1e-4)


def test_removals_disabled_computes_the_untouched_model_and_restores(sd_pipe, removals, tmp_path):
    """Distillation's base anchor reads its teacher this way: every removal off (fused, merged, as adapters), a
    user's own LoRA kept, and the pipeline exactly as it was after the block, also when the block raises."""
    from diffusers_unlearn.pipeline import removals_disabled

    cat, dog = removals
    dog.save_pretrained(tmp_path / "style")
    sd_pipe.load_lora_weights(tmp_path / "style", adapter_name="style")  # a user's LoRA: stays on
    users_image = generate(sd_pipe, PROMPT)
    sd_pipe.load_unlearning(cat, mode="fused")
    sd_pipe.load_unlearning(synthetic_removal(sd_pipe, "tree", seed=3))  # as a PEFT adapter
    loaded, loaded_weights = generate(sd_pipe, PROMPT), weights(sd_pipe)
    assert not np.allclose(loaded, users_image, atol=1e-4)  # the premise: the removals change the image
    with removals_disabled(sd_pipe):
        assert np.allclose(generate(sd_pipe, PROMPT), users_image, atol=1e-4)
    assert_same_weights(sd_pipe, loaded_weights)
    assert np.array_equal(generate(sd_pipe, PROMPT), loaded)
    with pytest.raises(RuntimeError, match="inside"), removals_disabled(sd_pipe):
        raise RuntimeError("inside")
    assert_same_weights(sd_pipe, loaded_weights)
    assert all(entry.verified for entry in sd_pipe.unlearning)


def test_bad_mode_and_check_values(sd_pipe, removals):
    with pytest.raises(ValueError, match="Unknown mode"):
        sd_pipe.load_unlearning(removals[0], mode="fuse")
    with pytest.raises(ValueError, match="check must be"):
        sd_pipe.load_unlearning(removals[0], check="raise")
    assert sd_pipe.unlearning == ()


def test_both_removals_active_after_two_loads(sd_pipe, removals):
    """diffusers activates only the last loaded adapter; we keep every removal active."""
    cat, dog = removals
    sd_pipe.load_unlearning(cat)
    sd_pipe.load_unlearning(dog)
    assert sorted(sd_pipe.get_active_adapters()) == ["no-cat", "no-dog"]
    sd_pipe.unload_unlearning("no-cat")
    assert [u.name for u in sd_pipe.unlearning] == ["no-dog"]
    assert sd_pipe.get_active_adapters() == ["no-dog"]


def test_coexists_with_a_users_own_lora(sd_pipe, removals, tmp_path):
    cat, dog = removals
    dog.save_pretrained(tmp_path / "style")
    sd_pipe.load_lora_weights(tmp_path / "style", adapter_name="style")  # any plain LoRA
    sd_pipe.load_unlearning(cat)
    assert sorted(sd_pipe.get_active_adapters()) == ["no-cat", "style"]
    sd_pipe.unload_unlearning()
    assert sd_pipe.get_active_adapters() == ["style"]


def test_name_clash_and_adapter_name(sd_pipe, removals):
    cat, _ = removals
    sd_pipe.load_unlearning(cat)
    with pytest.raises(du.AdapterNameError, match="already loaded"):
        sd_pipe.load_unlearning(cat)
    sd_pipe.load_unlearning(cat, adapter_name="cat-again")
    assert [u.name for u in sd_pipe.unlearning] == ["no-cat", "cat-again"]
    with pytest.raises(du.AdapterNameError, match="Not loaded"):
        sd_pipe.unload_unlearning("nope")


def test_plain_function_form(sd_pipe, removals):
    du.load_unlearning(sd_pipe, removals[0], mode="fused")
    assert du.unlearning(sd_pipe) == sd_pipe.unlearning
    du.unload_unlearning(sd_pipe)
    assert du.unlearning(sd_pipe) == ()


def test_base_mismatch_leaves_the_pipeline_untouched(removals):
    other = make_sd_pipeline(seed=1)
    reference, image = weights(other), generate(other, PROMPT)
    with pytest.raises(du.BaseModelMismatchError, match="made for base weights"):
        other.load_unlearning(removals[0])
    assert other.unlearning == ()
    assert_same_weights(other, reference)
    assert np.array_equal(generate(other, PROMPT), image)


def _renamed_layer(weights):
    key = next(k for k in weights if k.endswith("lora_A.weight"))
    layer = key.removesuffix(".lora_A.weight")
    moved = {k.replace(layer, layer.replace("attn2", "attn9")) if k.startswith(layer + ".") else k: v
             for k, v in weights.items()}  # fmt: skip
    return moved


def _wider_layer(weights):
    key = next(k for k in weights if k.endswith("lora_A.weight"))
    widened = dict(weights)
    widened[key] = torch.cat([weights[key], weights[key][:, :1]], dim=1)  # one more input than the layer has
    return widened


@pytest.mark.parametrize("edit, message", [(_renamed_layer, "which this model lacks"), (_wider_layer, "has shape")])
def test_layers_the_model_lacks_or_wrong_shapes_are_refused(sd_pipe, removals, edit, message):
    reference, image = weights(sd_pipe), generate(sd_pipe, PROMPT)
    cat = removals[0]
    broken = du.UnlearningAdapter(edit(dict(cat.lora_weights)), dict(cat.metadata), cat.probes)
    with pytest.raises(du.BaseModelMismatchError, match=message):
        sd_pipe.load_unlearning([removals[1], broken])
    assert sd_pipe.unlearning == ()
    assert_same_weights(sd_pipe, reference)
    assert np.array_equal(generate(sd_pipe, PROMPT), image)


@pytest.mark.parametrize("mode", ["adapters", "merged", "fused"])
def test_failure_in_the_middle_of_a_load_rolls_back(sd_pipe, removals, monkeypatch, mode):
    cat, dog = removals
    sd_pipe.load_unlearning(cat)  # something already loaded must survive the failed load
    reference, image = weights(sd_pipe), generate(sd_pipe, PROMPT)
    adapters_before = sd_pipe.get_list_adapters()

    real = du.pipeline._is_applied
    monkeypatch.setattr(
        du.pipeline, "_is_applied", lambda d, entry, *a: "third" not in entry.members and real(d, entry, *a)
    )
    third = du.UnlearningAdapter(dict(dog.lora_weights), {**dog.metadata, "name": "third"}, dog.probes)
    with pytest.raises(du.VerificationError, match="does not carry its edit"):
        sd_pipe.load_unlearning([dog, third], mode=mode)
    assert [u.name for u in sd_pipe.unlearning] == ["no-cat"]
    assert sd_pipe.get_list_adapters() == adapters_before
    assert_same_weights(sd_pipe, reference)
    assert np.array_equal(generate(sd_pipe, PROMPT), image)


def test_missing_source_and_bad_type(sd_pipe, tmp_path):
    with pytest.raises(du.AdapterNotFoundError):
        sd_pipe.load_unlearning(tmp_path / "nothing-here")
    with pytest.raises(TypeError, match="folder path"):
        sd_pipe.load_unlearning(42)
    assert sd_pipe.unlearning == ()


def test_verification_detects_a_disabled_removal(sd_pipe, removals):
    sd_pipe.load_unlearning(removals[0])
    with pytest.warns(du.InteropWarning, match="no-cat"):
        sd_pipe.disable_lora()
    assert sd_pipe.unlearning[0].verified is False
    sd_pipe.enable_lora()
    assert sd_pipe.unlearning[0].verified is True


def test_verification_detects_a_weakened_or_edited_removal(sd_pipe, removals):
    cat = removals[0]
    sd_pipe.load_unlearning(cat)
    with pytest.warns(du.InteropWarning, match="no-cat"):
        sd_pipe.set_adapters(["no-cat"], adapter_weights=[0.5])  # half strength: the concept half comes back
    assert sd_pipe.unlearning[0].verified is False
    sd_pipe.set_adapters(["no-cat"], adapter_weights=[1.0])
    assert sd_pipe.unlearning[0].verified is True
    layer = sd_pipe.unet.get_submodule(cat.layer_names[0])
    with torch.no_grad():
        layer.lora_A["no-cat"].weight[0, 0] += 0.1  # one factor of one layer edited in place
    assert sd_pipe.unlearning[0].verified is False


@pytest.mark.parametrize("mode", ["adapters", "merged", "fused"])
def test_a_state_dict_and_a_scale(sd_pipe, removals, mode):
    cat = removals[0]
    reference = weights(sd_pipe)
    bare = {key.removeprefix("unet."): value for key, value in cat.lora_weights.items()}  # prefix optional
    loaded = sd_pipe.load_unlearning(bare, adapter_name="bare-cat", mode=mode, scale=0.5)
    assert [(u.name, u.concept, u.scale, u.verified) for u in loaded] == [("bare-cat", None, 0.5, True)]
    layer = cat.layer_names[0]
    module = sd_pipe.unet.get_submodule(layer)
    eye = torch.eye(module.get_base_layer().in_features if hasattr(module, "get_base_layer") else module.in_features)
    with torch.no_grad():
        applied = module(eye).T - reference[layer + ".weight"]
    assert torch.allclose(applied, 0.5 * cat.delta(layer), atol=1e-5)
    sd_pipe.unload_unlearning()
    assert_same_weights(sd_pipe, reference)


def test_bad_state_dicts_and_scales(sd_pipe, removals):
    with pytest.raises(du.AdapterFormatError, match="not a LoRA key"):
        sd_pipe.load_unlearning({"unet.conv_in.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="scale must be a positive number"):
        sd_pipe.load_unlearning(removals[0], scale=0)
    assert sd_pipe.unlearning == ()


def test_signature_like_diffusers():
    parameters = inspect.signature(du.load_unlearning).parameters
    assert list(parameters)[:2] == ["pipe", "pretrained_model_name_or_path_or_dict"]
    assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in list(parameters.values())[2:])
    assert {"adapter_name", "mode", "scale", "check", "hub_kwargs"} <= set(parameters)
    assert {"revision", "token", "cache_dir", "local_files_only", "endpoint"} <= set(du.hub.HubKwargs.__annotations__)


def test_a_removal_already_loaded_as_a_plain_lora_is_refused(sd_pipe, removals, tmp_path):
    cat = removals[0]
    cat.save_pretrained(tmp_path / "no-cat")
    sd_pipe.load_lora_weights(tmp_path / "no-cat", adapter_name="plain")
    with pytest.raises(du.AdapterNameError, match="apply it twice"):
        sd_pipe.load_unlearning(tmp_path / "no-cat", mode="fused")
    assert sd_pipe.unlearning == ()


def test_a_deep_copy_carries_its_removals(sd_pipe, removals):
    sd_pipe.load_unlearning(removals[0], mode="fused")
    twin = copy.deepcopy(sd_pipe)
    assert twin.unlearning == sd_pipe.unlearning
    twin.unload_unlearning()
    assert twin.unlearning == () and sd_pipe.unlearning[0].verified


def test_unloading_keeps_a_users_text_encoder_lora(sd_pipe, removals):
    text_lora = {
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(2, 32),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": torch.randn(32, 2),
    }
    sd_pipe.load_lora_weights(text_lora, adapter_name="te-style")
    sd_pipe.load_unlearning(removals[0])
    sd_pipe.unload_unlearning()
    assert sd_pipe.get_list_adapters() == {"text_encoder": ["te-style"]}
