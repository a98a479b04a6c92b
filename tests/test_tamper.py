"""Tampered files are refused before anything touches the pipeline: every file of a saved stack and of a single saved
removal (weights, probes, metadata, manifest), each way of breaking it, through `from_pretrained` and
`pipe.load_unlearning`; the pipeline keeps its weights and its loaded removals."""

import json
import shutil
import struct

import pytest
import torch
from conftest import make_sd_pipeline

import diffusers_unlearn as du
from diffusers_unlearn.manifest import MANIFEST_NAME, METADATA_NAME, PROBES_NAME, WEIGHTS_NAME

pytestmark = pytest.mark.random_targets  # see conftest.py


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """`stack`: a chain of two (dog made on top of cat) saved as a folder; `single`: cat saved alone; `pipe`: a
    pipeline carrying a third removal (horse), whose state every failed load must leave as it was."""
    pipe = make_sd_pipeline()
    cat = du.erase(pipe, "cat")
    pipe.load_unlearning(cat)
    dog = du.erase(pipe, "dog")
    pipe.unload_unlearning()
    horse = du.erase(pipe, "horse")
    pipe.load_unlearning(horse)
    root = tmp_path_factory.mktemp("saved")
    return {
        "stack": du.UnlearningStack([cat, dog]).save_pretrained(root / "stack"),
        "single": cat.save_pretrained(root / "single"),
        "pipe": pipe,
    }


def _flip(data: bytes, where: float) -> bytes:
    index = min(int(len(data) * where), len(data) - 1)
    return data[:index] + bytes([data[index] ^ 1]) + data[index + 1 :]


def _safetensors_header(data: bytes, header: bytes) -> bytes:
    """The same tensor bytes behind another header of the same length (padded with spaces, as safetensors pads)."""
    (length,) = struct.unpack("<Q", data[:8])
    return data[:8] + header.ljust(length)[:length] + data[8 + length :]


# Each tamper: (name, function of the file's bytes and whether it is a JSON file -> new bytes)
TAMPERS = {
    "flip-first": lambda data, is_json: _flip(data, 0.0),
    "flip-middle": lambda data, is_json: _flip(data, 0.5),
    "flip-last": lambda data, is_json: _flip(data, 1.0),
    "truncated": lambda data, is_json: data[: len(data) // 2],
    "empty": lambda data, is_json: b"",
    "invalid-json": lambda data, is_json: b"{not json" if is_json else _safetensors_header(data, b"{not json"),
    "wrong-shape-json": lambda data, is_json: (
        b'{"entries": {"name": 1}, "format_version": 1}' if is_json else _safetensors_header(data, b'[1, "x"]')
    ),
    "valid-json-of-another-file": lambda data, is_json: (
        b'{"format_version": "1.0", "name": "no-cat", "rank": 1, "base_fingerprint": "x", "method": "x"}'
        if is_json
        else _safetensors_header(data, b'{"__metadata__": {"format": "pt"}}')
    ),
}
FILES = {  # folder kind -> the files to tamper with, relative to the folder
    "stack": [MANIFEST_NAME, *(f"adapters/002-no-dog/{name}" for name in (WEIGHTS_NAME, PROBES_NAME, METADATA_NAME))],
    "single": [MANIFEST_NAME, WEIGHTS_NAME, PROBES_NAME, METADATA_NAME],
}
FILES_NAMES = {"stack": ["no-cat", "no-dog"], "single": ["no-cat"]}
CASES = [(kind, file, tamper) for kind, files in FILES.items() for file in files for tamper in TAMPERS]


def _state(pipe):
    return (
        [(u.name, u.verified) for u in pipe.unlearning],
        pipe.get_list_adapters(),
        {k: v.clone() for k, v in pipe.unet.state_dict().items()},
    )


@pytest.mark.parametrize("kind, file, tamper", CASES, ids=[f"{k}-{f.split('/')[-1]}-{t}" for k, f, t in CASES])
def test_a_tampered_file_is_refused_before_the_pipeline_is_touched(saved, tmp_path, kind, file, tamper):
    folder = shutil.copytree(saved[kind], tmp_path / kind)
    path = folder / file
    path.write_bytes(TAMPERS[tamper](path.read_bytes(), path.suffix == ".json"))
    loader = du.UnlearningStack if kind == "stack" else du.UnlearningAdapter
    with pytest.raises(du.AdapterFormatError):
        loader.from_pretrained(folder)

    pipe = saved["pipe"]
    names, adapters, weights = _state(pipe)
    with pytest.raises(du.AdapterFormatError):
        pipe.load_unlearning(folder)
    after_names, after_adapters, after_weights = _state(pipe)
    assert after_names == names == [("no-horse", True)] and after_adapters == adapters
    assert after_weights.keys() == weights.keys()
    assert all(torch.equal(after_weights[k], weights[k]) for k in weights)


@pytest.mark.parametrize("kind", ["stack", "single"])
def test_every_byte_of_the_manifest_is_covered(saved, tmp_path, kind):
    """A flip of any byte of the manifest (one in three here) is refused: JSON syntax, schema, the sha256 and every
    recorded field (name, concept, id, base model) are checked against the files."""
    folder = shutil.copytree(saved[kind], tmp_path / kind)
    original = (folder / MANIFEST_NAME).read_bytes()
    loader = du.UnlearningStack if kind == "stack" else du.UnlearningAdapter
    for index in range(0, len(original), 3):
        (folder / MANIFEST_NAME).write_bytes(original[:index] + bytes([original[index] ^ 1]) + original[index + 1 :])
        with pytest.raises(du.AdapterFormatError):
            loader.from_pretrained(folder)
            raise AssertionError(f"accepted a flip at byte {index}: {original[index - 20 : index + 20]!r}")
    (folder / MANIFEST_NAME).write_bytes(original)
    loaded = loader.from_pretrained(folder)  # the untouched folder loads
    assert (loaded.names if kind == "stack" else [loaded.name]) == FILES_NAMES[kind]


def test_a_removal_without_a_manifest_has_its_bytes_checked(saved, tmp_path):
    """A removal folder without a manifest (written by an older release) is parsed with typed errors only."""
    folder = shutil.copytree(saved["single"], tmp_path / "old")
    (folder / MANIFEST_NAME).unlink()
    assert du.UnlearningAdapter.from_pretrained(folder).name == "no-cat"  # still loads, with a warning
    for text in (b"{not json", b'{"name": "no-cat"', b"[]", b"\xff\xfe"):
        (folder / METADATA_NAME).write_bytes(text)
        with pytest.raises(du.AdapterFormatError):
            du.UnlearningAdapter.from_pretrained(folder)
        with pytest.raises(du.AdapterFormatError):
            saved["pipe"].load_unlearning(folder)
    assert [u.name for u in saved["pipe"].unlearning] == ["no-horse"]


def test_a_manifest_of_an_older_release_still_loads(saved, tmp_path):
    """Stacks saved before every file was pinned list the weights' sha256 only: they load as before."""
    folder = shutil.copytree(saved["stack"], tmp_path / "old")
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    for entry in manifest["entries"]:
        del entry["files"]
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    assert du.UnlearningStack.from_pretrained(folder).names == ["no-cat", "no-dog"]
    weights = folder / "adapters" / "001-no-cat" / WEIGHTS_NAME
    weights.write_bytes(_flip(weights.read_bytes(), 0.9))
    with pytest.raises(du.AdapterFormatError, match="does not match the sha256"):
        du.UnlearningStack.from_pretrained(folder)


def test_any_iterable_of_removals_loads_and_the_single_folder_is_one_removal(saved):
    """`load_unlearning` takes a stack, a generator of removals or a folder alike (it does not know the stack)."""
    pipe, stack = saved["pipe"], du.UnlearningStack.from_pretrained(saved["stack"])
    for source in (stack, (removal for removal in stack), saved["stack"]):
        assert [u.name for u in pipe.load_unlearning(source)] == ["no-horse", "no-cat", "no-dog"]
        pipe.unload_unlearning(["no-cat", "no-dog"])
    assert du.UnlearningStack.from_pretrained(saved["single"]).names == ["no-cat"]
    with pytest.raises(du.AdapterNameError, match="chain of 2"):
        du.UnlearningAdapter.from_pretrained(saved["stack"])
