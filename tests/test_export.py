"""Kohya / A1111 export, proven through diffusers' own kohya conversion."""

import numpy as np
import pytest
import torch
from conftest import generate

import diffusers_unlearn as du
from diffusers_unlearn.export import export_kohya

pytestmark = pytest.mark.random_targets  # see conftest.py

PROMPT = "a photo of a cat"


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_kohya_export_loads_back_through_diffusers_with_the_same_images(family, sd_pipe, sdxl_pipe, tmp_path):
    pipe = sd_pipe if family == "sd" else sdxl_pipe
    adapter = du.erase(pipe, "cat", neighbors=["dog"])
    pipe.load_unlearning(adapter)
    ours = generate(pipe, PROMPT)
    pipe.unload_unlearning()

    path = export_kohya(adapter, tmp_path / "no-cat.safetensors", dtype=torch.float32)
    pipe.load_lora_weights(path, adapter_name="kohya")  # diffusers detects the kohya keys and converts them
    assert np.allclose(generate(pipe, PROMPT), ours, atol=1e-5)
    if family == "sdxl":  # the pooled-text layer travelled too
        assert any("add_embedding.linear_1" in name for name in dict(pipe.unet.named_modules()) if "lora_A" in name)


def test_a_stack_exports_merged_and_bad_paths_write_nothing(sd_pipe, tmp_path):
    cat = du.erase(sd_pipe, "cat")
    sd_pipe.load_unlearning(cat)
    dog = du.erase(sd_pipe, "dog")
    sd_pipe.load_unlearning(dog)
    chained = generate(sd_pipe, PROMPT)
    sd_pipe.unload_unlearning()
    path = export_kohya(du.UnlearningStack([cat, dog]), tmp_path / "stack.safetensors")
    sd_pipe.load_lora_weights(path, adapter_name="kohya")
    assert np.allclose(generate(sd_pipe, PROMPT), chained, atol=2e-3)  # fp16 in the file
    for bad in (tmp_path / "stack.pt", tmp_path):
        with pytest.raises(ValueError):
            export_kohya(cat, bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stack.safetensors"]
