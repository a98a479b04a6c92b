"""`UnlearningAdapter` files: a plain diffusers LoRA plus provenance kept out of diffusers' metadata."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import generate
from peft import LoraConfig
from safetensors import safe_open
from safetensors.torch import save_file

import diffusers_unlearn as du
from diffusers_unlearn.adapter import HEADER_KEY, LORA_METADATA_KEY, METADATA_NAME, PROBES_NAME, WEIGHTS_NAME
from diffusers_unlearn.manifest import MANIFEST_NAME

FILES = sorted([WEIGHTS_NAME, METADATA_NAME, PROBES_NAME, MANIFEST_NAME])  # the manifest pins the others' sha256

pytestmark = pytest.mark.random_targets  # see conftest.py

TESTS = Path(__file__).parent


@pytest.fixture
def adapter(sd_pipe):
    return du.erase(sd_pipe, "cat", aliases=["pikachu"], neighbors=["dog", "tree"])


def test_round_trip(adapter, tmp_path):
    folder = adapter.save_pretrained(tmp_path / "no-cat")
    assert sorted(p.name for p in folder.iterdir()) == FILES
    loaded = du.UnlearningAdapter.from_pretrained(folder)
    assert loaded.metadata == adapter.metadata
    assert loaded.concept == "cat" and loaded.name == "no-cat"
    for key, tensor in adapter.lora_weights.items():
        assert torch.equal(loaded.lora_weights[key], tensor)
    for key, tensor in adapter.probes.items():
        assert torch.equal(loaded.probes[key], tensor)


def test_file_is_a_diffusers_lora_with_separate_provenance(adapter, tmp_path):
    folder = adapter.save_pretrained(tmp_path / "no-cat")
    with safe_open(folder / WEIGHTS_NAME, framework="pt") as handle:
        header = handle.metadata()
        keys = list(handle.keys())
    assert all(k.startswith("unet.") and (".lora_A." in k or ".lora_B." in k) for k in keys)
    assert any(k.endswith("attn2.to_k.lora_A.weight") for k in keys)
    lora_metadata = json.loads(header[LORA_METADATA_KEY])
    assert set(lora_metadata) == {"unet.r", "unet.lora_alpha", "unet.target_modules"}
    config = LoraConfig(**{k.removeprefix("unet."): v for k, v in lora_metadata.items()})
    assert config.r == config.lora_alpha == adapter.rank
    provenance = json.loads(header[HEADER_KEY])
    assert provenance == json.loads((folder / METADATA_NAME).read_text())
    for field in (
        "format_version",
        "concept",
        "aliases",
        "targets",
        "protected_prompts",
        "method",
        "base_fingerprint",
    ):
        assert field in provenance


def test_vanilla_diffusers_loads_it_bit_identically(sd_pipe, adapter, tmp_path):
    """A fresh interpreter that never imports diffusers_unlearn loads the folder with load_lora_weights."""
    folder = adapter.save_pretrained(tmp_path / "no-cat")
    script = textwrap.dedent(
        f"""
        import sys, numpy as np
        sys.path.insert(0, {str(TESTS)!r})
        from conftest import make_sd_pipeline, generate
        pipe = make_sd_pipeline()
        pipe.load_lora_weights({str(folder)!r})
        assert pipe.get_active_adapters(), "nothing loaded"
        np.save({str(tmp_path / "vanilla.npy")!r}, generate(pipe, "a photo of a cat"))
        assert "diffusers_unlearn" not in sys.modules
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    sd_pipe.load_unlearning(folder)
    ours = generate(sd_pipe, "a photo of a cat")
    import numpy as np

    vanilla = np.load(tmp_path / "vanilla.npy")
    assert np.array_equal(ours, vanilla)
    sd_pipe.unload_unlearning()
    assert not np.array_equal(generate(sd_pipe, "a photo of a cat"), vanilla)  # the removal did change the image


def test_fp16_save_halves_the_file(adapter, tmp_path):
    full = adapter.save_pretrained(tmp_path / "fp32") / WEIGHTS_NAME
    half = adapter.save_pretrained(tmp_path / "fp16", dtype=torch.float16) / WEIGHTS_NAME
    tensor_bytes = sum(t.numel() * 4 for t in adapter.lora_weights.values())
    saved = full.stat().st_size - half.stat().st_size
    assert abs(saved - tensor_bytes / 2) < 256, (saved, tensor_bytes)  # only the header's offsets differ
    assert (
        du.UnlearningAdapter.from_pretrained(half.parent).lora_weights[next(iter(adapter.lora_weights))].dtype
        == torch.float16
    )


def _rewrite(folder, tensors=None, header=None):
    path = folder / WEIGHTS_NAME
    with safe_open(path, framework="pt") as handle:
        old_header = handle.metadata()
        old = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    save_file(tensors(old) if tensors else old, path, metadata=header(old_header) if header else old_header)
    (folder / METADATA_NAME).unlink()


def _set_version(header):
    provenance = json.loads(header[HEADER_KEY])
    provenance["format_version"] = "2.0"
    return {**header, HEADER_KEY: json.dumps(provenance)}


def _nan(tensors):
    key = next(k for k in tensors if "lora_B" in k)
    tensors[key][0, 0] = float("nan")
    return tensors


def _drop_one(tensors):
    tensors.pop(next(k for k in tensors if "lora_B" in k))
    return tensors


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda f: _rewrite(f, header=_set_version), "format version 2.0"),
        (lambda f: _rewrite(f, tensors=_nan), "NaN"),
        (lambda f: _rewrite(f, tensors=_drop_one), "unpaired"),
        (lambda f: _rewrite(f, header=lambda h: {k: v for k, v in h.items() if k != HEADER_KEY}), "without"),
        (lambda f: (f / WEIGHTS_NAME).write_bytes((f / WEIGHTS_NAME).read_bytes()[:200]), "not a readable"),
        (lambda f: (f / METADATA_NAME).write_text('{"name": "edited"}'), "disagrees"),
    ],
)
def test_bad_files_raise_format_errors(adapter, tmp_path, corrupt, message):
    folder = adapter.save_pretrained(tmp_path / "no-cat")
    (folder / MANIFEST_NAME).unlink()  # with it, any of these fails its sha256 first (tests/test_tamper.py)
    corrupt(folder)
    with pytest.raises(du.AdapterFormatError, match=message):
        du.UnlearningAdapter.from_pretrained(folder)


def test_missing_folder(tmp_path):
    with pytest.raises(du.AdapterNotFoundError, match="expected pytorch_lora_weights"):
        du.UnlearningAdapter.from_pretrained(tmp_path)


def test_failed_save_keeps_the_previous_files(adapter, tmp_path, monkeypatch):
    folder = adapter.save_pretrained(tmp_path / "no-cat")
    before = (folder / WEIGHTS_NAME).read_bytes()

    def broken(tensors, path, metadata=None):
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr("diffusers_unlearn.adapter.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        adapter.save_pretrained(folder, dtype=torch.float16)
    assert (folder / WEIGHTS_NAME).read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == FILES


def test_base_model_of_a_shipped_model_is_its_world_and_of_a_folder_its_name(tmp_path):
    """Provenance never records a local path: the embedded models by their world, another folder by its name."""
    from diffusers_unlearn.adapter import model_name

    package = Path(du.__file__).parent
    assert model_name(package / "digits" / "model") == "digits"
    assert model_name(package / "glyphs" / "model") == "glyphs"
    (tmp_path / "model").mkdir()
    assert model_name(tmp_path / "model") == "model"  # a folder named "model" elsewhere is only a name
    assert model_name("org/name") == "org/name"
