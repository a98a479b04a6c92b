"""`UnlearningStack`: an ordered chain of removals in one folder, loaded in one call."""

import json

import numpy as np
import pytest
import torch
from conftest import generate, make_sd_pipeline

import diffusers_unlearn as du
from diffusers_unlearn.adapter import WEIGHTS_NAME
from diffusers_unlearn.stack import MANIFEST_NAME

PROMPT = "a photo of a cat"


@pytest.fixture
def chain(sd_pipe):
    """Three removals, each made on top of the previous ones (the pipeline keeps them loaded)."""
    adapters = []
    for concept in ("cat", "dog", "tree"):
        adapter = du.erase(sd_pipe, concept, neighbors=["horse"])
        sd_pipe.load_unlearning(adapter)
        adapters.append(adapter)
    image = generate(sd_pipe, PROMPT)
    sd_pipe.unload_unlearning()
    return adapters, image


def test_save_load_and_stacking_equals_the_chain_built_step_by_step(chain, tmp_path):
    adapters, chained_image = chain
    folder = du.UnlearningStack(adapters).save_pretrained(tmp_path / "removals")
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert [e["path"] for e in manifest["entries"]] == [
        "adapters/001-no-cat",
        "adapters/002-no-dog",
        "adapters/003-no-tree",
    ]
    assert manifest["base_fingerprint"] == adapters[0].base_fingerprint

    pipe = make_sd_pipeline()
    loaded = pipe.load_unlearning(folder)  # a stack folder loads every removal, in order
    assert [u.name for u in loaded] == ["no-cat", "no-dog", "no-tree"]
    assert np.allclose(generate(pipe, PROMPT), chained_image, atol=1e-5)
    assert du.UnlearningStack.from_pretrained(folder / MANIFEST_NAME).names == ["no-cat", "no-dog", "no-tree"]


def test_tampered_weights_are_refused_and_nothing_is_loaded(chain, tmp_path):
    folder = du.UnlearningStack(chain[0]).save_pretrained(tmp_path / "removals")
    weights = folder / "adapters" / "002-no-dog" / WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    pipe = make_sd_pipeline()
    with pytest.raises(du.AdapterFormatError, match="does not match the sha256"):
        pipe.load_unlearning(folder)
    assert pipe.unlearning == ()


def test_append_remove_reorder(chain):
    adapters, _ = chain
    stack = du.UnlearningStack(adapters[:2])
    with pytest.raises(du.AdapterNameError, match="already holds"):
        stack.append(adapters[0])
    stack.append(adapters[2])
    stack.reorder(["no-tree", "no-cat", "no-dog"])
    assert stack.names == ["no-tree", "no-cat", "no-dog"] and stack["no-cat"] is adapters[0]
    with pytest.raises(du.AdapterNameError, match="exactly once"):
        stack.reorder(["no-tree"])
    assert stack.remove("no-cat") is adapters[0] and len(stack) == 2
    other = du.erase(make_sd_pipeline(seed=1), "cat")
    with pytest.raises(du.BaseModelMismatchError):
        stack.append(other)


def test_apply(chain, sd_pipe):
    adapters, image = chain
    du.UnlearningStack(adapters).apply(sd_pipe, fuse=True)
    assert all(u.fused and u.verified for u in sd_pipe.unlearning)
    assert np.allclose(generate(sd_pipe, PROMPT), image, atol=1e-4)


def test_merge_concat_is_exact_and_svd_reports_its_error(chain, tmp_path):
    adapters, image = chain
    stack = du.UnlearningStack(adapters)
    concat = stack.merge("concat")
    assert concat.rank == sum(a.rank for a in adapters)
    for layer in adapters[0].layer_names:
        total = sum(a.delta(layer) for a in adapters)
        torch.testing.assert_close(concat.delta(layer), total, rtol=1e-5, atol=1e-6)
    full = stack.merge("svd", rank=concat.rank)
    assert full.metadata["figures"]["merge_error"] < 1e-4
    small = stack.merge("svd", rank=2)
    assert small.rank == 2 and 0 < small.metadata["figures"]["merge_error"] < 1

    folder = concat.save_pretrained(tmp_path / "merged")  # the merged removal is a plain diffusers LoRA
    pipe = make_sd_pipeline()
    pipe.load_lora_weights(folder)
    assert np.allclose(generate(pipe, PROMPT), image, atol=1e-4)
    with pytest.raises(ValueError, match="planned"):
        stack.merge("joint")


def test_check_measures_interference_on_the_digits_model(tmp_path):
    """Independently made removals move each other's protected inputs; one made on top of the other does not."""
    from diffusers_unlearn import digits
    from diffusers_unlearn.digits.concepts import Concept

    pipe = digits.load_pipeline()
    seven = du.erase(pipe, **Concept(7).erase_kwargs())
    red_seven_alone = du.erase(pipe, **Concept(7, "red").erase_kwargs())
    pipe.load_unlearning(seven)
    red_seven_on_top = du.erase(pipe, **Concept(7, "red").erase_kwargs())
    pipe.unload_unlearning()

    independent = du.UnlearningStack([seven, red_seven_alone]).check(pipe)
    chained = du.UnlearningStack([seven, red_seven_on_top]).check(pipe)
    assert independent.matrix.shape == (2, 2) and independent.undo.diagonal().abs().max() == 0
    # the removal made on top protects the first one's inputs: measured 4x less collateral, asserted 3x
    assert chained.collateral[0, 1] * 3 < independent.collateral[0, 1]
    assert not independent.passed and "verdict: FAILED" in str(independent)
    assert independent.failures()
    independent.plot(tmp_path / "heatmap.png")
    assert (tmp_path / "heatmap.png").stat().st_size > 1000
