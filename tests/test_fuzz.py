"""Property-based tests of the parsers that read untrusted files: only our typed errors may come out.

A bounded number of cases runs in CI; `HYPOTHESIS_PROFILE=long pytest tests/test_fuzz.py` runs many more.
"""

import contextlib
import json
import os
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import diffusers_unlearn as du
from diffusers_unlearn.adapter import HEADER_KEY, WEIGHTS_NAME, _parse_metadata
from diffusers_unlearn.manifest import MANIFEST_NAME, METADATA_NAME, PROBES_NAME, read_manifest

settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=5000, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
FILE_CASES = 40 if settings().max_examples <= 60 else 1000  # cases that write files to disk

TYPED = (du.AdapterFormatError, du.AdapterNotFoundError, du.BaseModelMismatchError, du.AdapterNameError)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)
metadata_like = st.fixed_dictionaries(
    {},
    optional={
        "format_version": st.sampled_from(["1.0", "1.3", "2.0", "0.9", "", "x"]) | json_values,
        "name": st.text(max_size=20) | json_values,
        "rank": st.integers(-3, 70) | json_values,
        "base_fingerprint": st.text(max_size=20) | json_values,
        "method": st.sampled_from(["closed_form", "distill", "merge:concat"]) | json_values,
        "denoiser": st.sampled_from(["unet", "transformer", "../x"]) | json_values,
        "targets": json_values,
        "concept": json_values,
    },
)


@given(st.text(max_size=200) | json_values.map(json.dumps) | metadata_like.map(json.dumps))
def test_provenance_parser(text):
    try:
        metadata = _parse_metadata(text, "fuzz")
    except du.AdapterFormatError:
        return
    assert isinstance(metadata, dict) and {"name", "rank", "base_fingerprint", "method"} <= set(metadata)


@settings(max_examples=FILE_CASES)
@given(st.binary(max_size=300), st.booleans())
def test_weights_file_reader_on_random_bytes(tmp_path_factory, data, with_length_prefix):
    folder = tmp_path_factory.mktemp("bytes")
    if with_length_prefix:  # a plausible safetensors header length followed by junk
        data = struct.pack("<Q", len(data)) + data
    (folder / WEIGHTS_NAME).write_bytes(data)
    with pytest.raises(TYPED):
        du.UnlearningAdapter.from_pretrained(folder)


@settings(max_examples=FILE_CASES)
@given(metadata_like, st.integers(1, 4), st.integers(1, 4), st.sampled_from(["ok", "nan", "unpaired", "shape"]))
def test_weights_file_reader_on_valid_safetensors_with_odd_content(tmp_path_factory, metadata, rank, width, kind):
    folder = tmp_path_factory.mktemp("odd")
    a, b = torch.randn(rank, width), torch.randn(3, rank)
    if kind == "nan":
        a[0, 0] = float("nan")
    if kind == "shape":
        b = torch.randn(3, rank + 1)
    tensors = {"unet.layer.lora_A.weight": a, "unet.layer.lora_B.weight": b}
    if kind == "unpaired":
        tensors["unet.other.lora_A.weight"] = a.clone()
    save_file(tensors, folder / WEIGHTS_NAME, metadata={HEADER_KEY: json.dumps(metadata)})
    try:
        adapter = du.UnlearningAdapter.from_pretrained(folder)
    except TYPED:
        return
    assert kind == "ok" and adapter.rank == rank  # anything accepted is a consistent, finite LoRA of its rank


@given(json_values | st.fixed_dictionaries({"format_version": st.just("1.0"), "entries": json_values}))
def test_stack_manifest_readers(tmp_path_factory, manifest):
    folder = tmp_path_factory.mktemp("manifest")
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(TYPED + (du.ResolveError,)):
        du.UnlearningStack.from_pretrained(folder)
        raise du.AdapterFormatError("accepted")  # an empty chain is fine: count it as handled
    with contextlib.suppress(TYPED):
        read_manifest(folder)


# ---------------------------------------------------------------------------------------------------------
# Raw bytes: what sits before the JSON and safetensors parsers (invalid UTF-8, truncation, flipped bits).
# ---------------------------------------------------------------------------------------------------------
def _tiny_removal(name: str, parents: list | None = None) -> du.UnlearningAdapter:
    generator = torch.Generator().manual_seed(len(name))
    weights = {
        f"unet.block.{i}.lora_{ab}.weight": torch.randn(shape, generator=generator)
        for i in range(2)
        for ab, shape in (("A", (2, 6)), ("B", (5, 2)))
    }
    metadata = {
        "format_version": "1.0", "name": name, "concept": name[3:], "rank": 2, "base_fingerprint": "sha256:x",
        "method": "closed_form", "adapter_id": du.adapter.content_id(weights), "parents": parents or [],
    }  # fmt: skip
    return du.UnlearningAdapter(weights, metadata, probes={"forget_moment": torch.randn(3, 6, generator=generator)})


@pytest.fixture(scope="module")
def saved_chain(tmp_path_factory):
    cat = _tiny_removal("no-cat")
    dog = _tiny_removal("no-dog", parents=[{"name": "no-cat", "adapter_id": cat.metadata["adapter_id"]}])
    root = tmp_path_factory.mktemp("chain")
    stack, single = (
        du.UnlearningStack([cat, dog]).save_pretrained(root / "stack"),
        cat.save_pretrained(root / "single"),
    )
    assert du.UnlearningStack.from_pretrained(stack).names == ["no-cat", "no-dog"]  # untouched, they load
    assert du.UnlearningAdapter.from_pretrained(single).same_as(cat)
    return stack, single


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@settings(max_examples=FILE_CASES)
@given(st.data(), st.sampled_from(["flip", "truncate", "insert", "replace"]), st.booleans())
def test_any_change_to_the_bytes_of_a_saved_folder_is_refused(tmp_path_factory, saved_chain, data, edit, single):
    """Whatever file of a saved stack or single removal is edited, however: `AdapterFormatError`, before parsing;
    except an edit of the manifest's whitespace alone, which loads the same chain."""
    source = saved_chain[1] if single else saved_chain[0]
    folder = tmp_path_factory.mktemp("edited")
    for name in _files(source):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes((source / name).read_bytes())
    path = folder / data.draw(st.sampled_from(_files(source)), label="file")
    original = path.read_bytes()
    at = data.draw(st.integers(0, len(original) - 1), label="at")
    if edit == "flip":
        changed = original[:at] + bytes([original[at] ^ data.draw(st.integers(1, 255))]) + original[at + 1 :]
    elif edit == "truncate":
        changed = original[:at]
    elif edit == "insert":
        changed = original[:at] + data.draw(st.binary(min_size=1, max_size=20)) + original[at:]
    else:
        changed = data.draw(st.binary(max_size=300).filter(lambda b: b != original))
    path.write_bytes(changed)
    if path.name == MANIFEST_NAME and _same_json(changed, original):  # e.g. its final newline cut: same chain
        loaded = du.UnlearningStack.from_pretrained(folder)
        assert loaded.names == du.UnlearningStack.from_pretrained(source).names
        return
    with pytest.raises(du.AdapterFormatError):
        (du.UnlearningAdapter if single else du.UnlearningStack).from_pretrained(folder)


def _same_json(changed: bytes, original: bytes) -> bool:
    """Whether an edit of a JSON file changed only its whitespace (the manifest is not hashed, its content is)."""
    try:
        return json.loads(changed) == json.loads(original)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False


@settings(max_examples=FILE_CASES)
@given(st.binary(max_size=400) | json_values.map(lambda v: json.dumps(v).encode()))
def test_manifest_and_metadata_readers_on_raw_bytes(tmp_path_factory, saved_chain, data):
    """Raw bytes as the manifest of a chain, and as the `unlearning.json` of a removal without a manifest."""
    folder = tmp_path_factory.mktemp("raw")
    (folder / MANIFEST_NAME).write_bytes(data)
    try:
        stack = du.UnlearningStack.from_pretrained(folder)
    except TYPED:
        pass
    else:
        assert len(stack) == 0  # only an empty chain can be accepted from bytes alone
    single = tmp_path_factory.mktemp("sidecar")
    for name in (WEIGHTS_NAME, PROBES_NAME):
        (single / name).write_bytes((saved_chain[1] / name).read_bytes())
    (single / METADATA_NAME).write_bytes(data)
    with pytest.raises(du.AdapterFormatError):
        du.UnlearningAdapter.from_pretrained(single)
