"""`UnlearningStack`: an ordered chain of removals in one folder, loaded in one call."""

import json

import numpy as np
import pytest
import torch
from conftest import generate, make_sd_pipeline

import diffusers_unlearn as du
from diffusers_unlearn.adapter import WEIGHTS_NAME
from diffusers_unlearn.stack import MANIFEST_NAME

pytestmark = pytest.mark.random_targets  # see conftest.py

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
    pipe.unload_unlearning()
    pipe.load_unlearning(sorted((folder / "adapters").iterdir()))  # or the three adapter folders
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
    with pytest.raises(du.ResolveError, match="pass `pipe=`"):
        stack.remove("no-cat")  # the later removals were made on top of it
    assert stack.names == ["no-tree", "no-cat", "no-dog"]
    with pytest.raises(du.ResolveError, match="reordered"):
        stack.remove("no-cat", pipe=make_sd_pipeline())  # "no-tree", made on top of it, now comes first
    assert stack.remove("no-cat", resolve=False) is adapters[0] and len(stack) == 2
    # kept as they are, the later removals no longer name it as a parent, so the chain still saves and loads
    assert all(a.metadata["detached_from"] == ["no-cat"] for a in stack)
    assert all("no-cat" not in [p["name"] for p in a.metadata["parents"]] for a in stack)
    other = du.erase(make_sd_pipeline(seed=1), "cat")
    with pytest.raises(du.BaseModelMismatchError):
        stack.append(other)


def test_stale_and_cyclic_parents_are_refused_on_load(chain, tmp_path, caplog):
    adapters, _ = chain
    pipe = make_sd_pipeline()
    # "no-dog" was made on top of "no-cat": a chain without "no-cat" loads, saying so
    gap = du.UnlearningStack(adapters[1:]).save_pretrained(tmp_path / "gap")
    pipe.load_unlearning(gap)
    assert "made on top of 'no-cat', which this chain does not hold" in caplog.text
    pipe.unload_unlearning()
    # ... but one holding another "no-cat" than the one "no-dog" was made on is stale
    other_cat = du.erase(make_sd_pipeline(), "cat", neighbors=["dog"])
    stale = du.UnlearningStack([other_cat, *adapters[1:]]).save_pretrained(tmp_path / "stale")
    with pytest.raises(du.AdapterFormatError, match="chain is stale"):
        pipe.load_unlearning(stale)
    # provenance edited so that "no-cat" claims to be made on top of "no-tree", made on top of it: a cycle
    forged = du.UnlearningAdapter(
        lora_weights=adapters[0].lora_weights,
        metadata={**adapters[0].metadata, "parents": [{"name": "no-tree", "adapter_id": None}]},
        probes=adapters[0].probes,
    )
    cyclic = du.UnlearningStack([forged, *adapters[1:]]).save_pretrained(tmp_path / "cyclic")
    with pytest.raises(du.AdapterFormatError, match="cycle .*no-cat -> no-tree -> no-cat"):
        du.UnlearningStack.from_pretrained(cyclic)
    assert pipe.unlearning == ()
    # the order inside a chain does not matter (the edits add up): a reordered chain loads
    stack = du.UnlearningStack(adapters)
    stack.reorder(["no-tree", "no-dog", "no-cat"])
    reordered = stack.save_pretrained(tmp_path / "reordered")
    assert du.UnlearningStack.from_pretrained(reordered).names == ["no-tree", "no-dog", "no-cat"]


def test_parents_already_on_the_pipeline_count_as_held(chain, tmp_path, caplog):
    """Removals saved one folder each and loaded one call at a time: the parents the pipeline already holds are
    the chain (no warning); a parent held under its name but with other weights is still refused as stale."""
    adapters, _ = chain
    folders = [a.save_pretrained(tmp_path / a.name) for a in adapters]
    pipe = make_sd_pipeline()
    for folder in folders:
        pipe.load_unlearning(folder, mode="fused")
    assert [a.name for a in pipe.unlearning] == ["no-cat", "no-dog", "no-tree"]
    pipe.unload_unlearning()
    pipe.load_unlearning(folders)  # several folders in one call: the earlier ones hold the later ones' parents
    assert "which this chain does not hold" not in caplog.text
    pipe.unload_unlearning()
    pipe.load_unlearning(folders[1])  # "no-dog" without "no-cat" on the pipeline: loads, saying so
    assert "made on top of 'no-cat', which this chain does not hold" in caplog.text
    pipe.unload_unlearning()
    pipe.load_unlearning(du.erase(make_sd_pipeline(), "cat", neighbors=["dog"]))  # another "no-cat"
    with pytest.raises(du.AdapterFormatError, match="chain is stale"):
        pipe.load_unlearning(folders[1])
    assert [a.name for a in pipe.unlearning] == ["no-cat"]
    # a removal read alone says nothing of its parents; where it joins a pipeline, it is checked as a folder is
    caplog.clear()
    dog = du.UnlearningAdapter.from_pretrained(folders[1])
    assert "does not hold" not in caplog.text
    with pytest.raises(du.AdapterFormatError, match="chain is stale"):
        pipe.load_unlearning(dog)
    pipe.unload_unlearning()
    pipe.load_unlearning([du.UnlearningAdapter.from_pretrained(folders[0]), dog])  # its parent listed before it
    assert "does not hold" not in caplog.text
    pipe.unload_unlearning()
    pipe.load_unlearning(dog)
    assert "made on top of 'no-cat', which this chain does not hold" in caplog.text
    pipe.unload_unlearning()
    # the same concept erased again on top of its first removal: same name, another removal; neither stale nor a cycle
    pipe.load_unlearning(folders[0])
    again = du.erase(pipe, "cat", neighbors=["dog", "tree"])
    assert again.name == "no-cat" and again.metadata["parents"][0]["name"] == "no-cat"
    caplog.clear()
    pipe.load_unlearning(again, adapter_name="no-cat-again")  # on the chain it was made on: nothing to say
    assert "does not hold" not in caplog.text
    pipe.unload_unlearning()
    pipe.load_unlearning(again)
    assert "made on top of 'no-cat', which this chain does not hold" in caplog.text


def test_withdrawal_re_solves_the_removals_made_on_top(chain, sd_pipe):
    adapters, _ = chain
    stack = du.UnlearningStack(adapters)
    assert stack.remove("no-dog", pipe=sd_pipe) is adapters[1]
    assert stack.names == ["no-cat", "no-tree"] and stack["no-cat"] is adapters[0]
    tree = stack["no-tree"]
    assert tree.metadata["resolved"] == {"withdrawn": "no-dog", "replaces": adapters[2].metadata["adapter_id"]}
    assert [p["name"] for p in tree.metadata["parents"]] == ["no-cat"]
    assert sd_pipe.unlearning == ()  # the pipeline is left as it was
    # the same as making "tree" on top of "cat" alone (its only mapping candidate is its context without it)
    sd_pipe.load_unlearning(adapters[0])
    fresh = du.erase(sd_pipe, "tree", neighbors=["horse"])
    sd_pipe.unload_unlearning()
    for layer in fresh.layer_names:
        torch.testing.assert_close(tree.delta(layer), fresh.delta(layer), rtol=1e-4, atol=1e-6)
        assert not torch.allclose(tree.delta(layer), adapters[2].delta(layer), rtol=1e-3)


def test_withdrawal_refuses_what_it_cannot_re_solve(sd_pipe):
    cat = du.erase(sd_pipe, "cat")
    sd_pipe.load_unlearning(cat)
    secret = du.erase(sd_pipe, "dog", redact=True)
    stack = du.UnlearningStack([cat, secret])
    with pytest.raises(du.ResolveError, match="redacted"):
        stack.remove("no-cat", pipe=sd_pipe)
    assert stack.names == ["no-cat", secret.name] and sd_pipe.unlearning[0].name == "no-cat"
    with pytest.raises(du.ResolveError, match="base pipeline"):
        du.UnlearningStack([cat, du.erase(sd_pipe, "tree")]).merge("joint", pipe=sd_pipe)  # "cat" is loaded


def test_check_at_load_time_raises_or_warns_before_touching_the_pipeline(sd_pipe):
    cat = du.erase(sd_pipe, "cat")
    undoing = du.UnlearningAdapter(  # the exact opposite edit: undoes "cat" completely
        {k: -v if "lora_B" in k else v for k, v in cat.lora_weights.items()},
        {**cat.metadata, "name": "undo-cat", "adapter_id": "x"},
        cat.probes,
    )
    report = du.UnlearningStack([cat, undoing]).check(sd_pipe)
    assert report.undo[0, 1] == pytest.approx(1.0, abs=1e-4) and not report.passed
    assert "no-cat is 100% undone (most by undo-cat)" in report.failures()
    with pytest.raises(du.InterferenceError, match="interfere") as error:
        sd_pipe.load_unlearning([cat, undoing], check=True)
    assert error.value.report.undo[0, 1] > 0.99 and sd_pipe.unlearning == ()
    with pytest.warns(UserWarning, match="interfere"):
        sd_pipe.load_unlearning([cat, undoing], check="warn", mode="merged")
    assert [u.members for u in sd_pipe.unlearning] == [("no-cat", "undo-cat")]


def test_joint_merge_of_one_removal_reproduces_it(sd_pipe):
    cat = du.erase(sd_pipe, "cat", neighbors=["horse"])
    joint = du.UnlearningStack([cat]).merge("joint", pipe=sd_pipe)
    assert joint.metadata["method"] == "merge:joint" and joint.rank == cat.rank
    for layer in cat.layer_names:
        torch.testing.assert_close(joint.delta(layer), cat.delta(layer), rtol=1e-4, atol=1e-6)


def test_apply(chain, sd_pipe):
    adapters, image = chain
    du.UnlearningStack(adapters).apply(sd_pipe, mode="fused")
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
    with pytest.raises(du.ResolveError, match="pass `pipe=`"):
        stack.merge("joint")
    with pytest.raises(ValueError, match="Unknown merge method"):
        stack.merge("average")


@pytest.mark.trained_model
def test_interference_and_joint_repair_on_the_digits_model(tmp_path):
    """Independently made "seven" and "red seven" push the red-seven prompts twice: flagged, and the joint merge
    repairs it; disjoint or chained removals pass; the merges agree with the stack loaded removal by removal."""
    from diffusers_unlearn import digits
    from diffusers_unlearn.digits import DigitsConceptScorer
    from diffusers_unlearn.digits.concepts import Concept, cell_probe
    from diffusers_unlearn.evaluation import evaluate

    pipe = digits.load_pipeline()
    seven = du.erase(pipe, **Concept(7).erase_kwargs())
    # "a red" is drawn as a seven, so this combination has no target of its own in the model: map it to fours
    red_seven = du.erase(pipe, **(Concept(7, "red").erase_kwargs() | {"mapping_candidates": ["four"]}))
    three = du.erase(pipe, **Concept(3).erase_kwargs())
    pipe.load_unlearning(seven)
    three_on_top = du.erase(pipe, **Concept(3).erase_kwargs())
    pipe.unload_unlearning()

    overlapping = du.UnlearningStack([seven, red_seven])
    report = overlapping.check(pipe)
    assert not report.passed and "verdict: FAILED" in str(report)
    assert report.shift[0, 1] > 0.5 and report.shift[1, 0] > 0.5  # measured 0.69 and 1.16
    report.plot(tmp_path / "heatmap.png")
    assert (tmp_path / "heatmap.png").stat().st_size > 1000
    concat = du.merge_deviation(list(overlapping), overlapping.merge("concat"))
    joint = du.merge_deviation(list(overlapping), overlapping.merge("joint", pipe=pipe))
    torch.testing.assert_close(concat, report.stack_shift)  # the plain sum deviates by exactly the shift
    assert (joint < concat / 2).all() and joint.max() < 0.4  # measured 0.07 and 0.23
    # a redacted member is re-solved from its stored statistics; its concept is matched by its salted hash
    secret = du.UnlearningStack([du.erase(pipe, **Concept(7).erase_kwargs(), redact=True), red_seven])
    secret_joint = du.merge_deviation(list(secret), secret.merge("joint", pipe=pipe))
    assert (secret_joint < concat / 2).all()  # measured 0.15 and 0.12

    assert du.UnlearningStack([seven, three]).check(pipe).passed
    chain = du.UnlearningStack([seven, three_on_top])
    chained = chain.check(pipe)
    assert chained.passed and chained.shift[1, 0] == 0  # "three" was made on top of "seven": not interference

    # the three merges against the chain loaded removal by removal: concat exact, svd and joint within 0.15 of
    # each member's own edit on its forget inputs (measured: svd 0.11 / 0.34 at rank 7, so at full rank here;
    # joint 0.07 / 0.09), and the same images' verdicts
    merged = {m: chain.merge(m, pipe=pipe) for m in ("concat", "joint")}
    merged["svd"] = chain.merge("svd", rank=merged["concat"].rank)
    for method, adapter in merged.items():
        assert du.merge_deviation(list(chain), adapter).max() < 0.15, method
    scorer, cells = DigitsConceptScorer(), [(1, "red", "thin"), (2, "blue", "bold"), (8, "green", "thin")]
    probes = {
        "forget": [Concept(7).forget_probe(), Concept(3).forget_probe()],
        "related": [cell_probe(*c) for c in cells],
    }
    for source in (chain, merged["concat"], merged["joint"], merged["svd"]):
        pipe.load_unlearning(source)
        result = evaluate(pipe, scorer, **probes, images_per_prompt=4, num_inference_steps=20)
        pipe.unload_unlearning()
        assert result.forget_accuracy <= 0.1 and result.related_retention >= 0.9, source


def test_check_without_probes_falls_back_to_an_approximate_estimate(chain, sd_pipe, tmp_path):
    adapters, _ = chain
    bare = du.UnlearningAdapter(adapters[1].lora_weights, adapters[1].metadata)  # e.g. shipped without its probes
    folder = bare.save_pretrained(tmp_path / "no-dog")  # (deleting a saved probes file fails its manifest)
    stripped = du.UnlearningAdapter.from_pretrained(folder)
    horse = du.erase(sd_pipe, "horse")  # made independently of "dog"
    report = du.UnlearningStack([horse, stripped]).check(sd_pipe)
    assert stripped.probes == {} and report.approximate == ["no-dog"]
    assert "approximate for ['no-dog']" in str(report)
    assert report.shift[1, 0] > 0 and torch.isfinite(report.shift).all()
