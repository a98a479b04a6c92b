"""The embedded digits model: shipped pipeline, tokenizer, prompts, scorer and a short generation."""

import numpy as np
import pytest
import torch

from diffusers_unlearn import digits
from diffusers_unlearn.digits.data import load_digits_data, vocabulary_words
from diffusers_unlearn.digits.scorer import compose_all


@pytest.fixture(scope="module")
def pipe():
    return digits.load_pipeline()


@pytest.fixture(scope="module")
def scorer():
    return digits.load_scorer()


def test_pipeline_loads_offline(pipe):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    assert isinstance(pipe, StableDiffusionPipeline)
    assert pipe.text_encoder.config.hidden_size >= 128
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.safety_checker is None
    assert pipe.vae_scale_factor == 2 and pipe.unet.config.sample_size == 8
    assert pipe.text_encoder.dtype == torch.float32
    assert any(name.endswith("attn2.to_k") for name, _ in pipe.unet.named_modules())


def test_shipped_size_under_10mb():
    root = digits.MODEL_DIR.parent
    size = sum(f.stat().st_size for d in (digits.MODEL_DIR, root / "scorer") for f in d.rglob("*") if f.is_file())
    assert size <= 10 * 1024 * 1024


def test_every_word_is_one_token(pipe):
    tok = pipe.tokenizer
    for word in vocabulary_words():
        ids = tok(word, add_special_tokens=False).input_ids
        assert len(ids) == 1, (word, tok.convert_ids_to_tokens(ids))
        assert tok.convert_ids_to_tokens(ids)[0] == word + "</w>"
    for n in range(10):
        assert len(tok(str(n), add_special_tokens=False).input_ids) == 1
    longest = max((t.format(digit="seven", colour="yellow", stroke="bold") for t in digits.TEMPLATES), key=len)
    assert len(tok(longest).input_ids) <= tok.model_max_length == pipe.text_encoder.config.max_position_embeddings


def test_prompt_and_constants():
    assert digits.DIGITS[7] == "seven" and len(digits.DIGITS) == 10
    assert len(digits.COLOURS) >= 4 and set(digits.STROKES) == {"thin", "bold"}
    assert digits.prompt(7, "red", "bold") == "a red seven, bold"
    assert digits.prompt(7, "red") == "a red seven"
    assert digits.prompt(3) == "a three"
    assert digits.prompt(0, stroke="thin") == "a zero, thin"
    assert all("{digit}" in t for t in digits.TEMPLATES)
    for bad in [(10,), (-1,), ("7",), (7, "purple"), (7, None, "heavy")]:
        with pytest.raises(ValueError):
            digits.prompt(*bad)


def test_scorer_on_held_out_images(scorer):
    data = load_digits_data()
    x, yd, yc, ys = compose_all(data, data.test_idx[:40])  # 40 digits x 4 colours x 2 strokes = 320 images
    out = scorer((x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8))
    assert isinstance(out, digits.ScorerOutput) and len(out) == len(x)
    assert (out.digit == yd.numpy()).mean() >= 0.95
    assert (out.colour == yc.numpy()).mean() >= 0.95
    assert (out.stroke == ys.numpy()).mean() >= 0.95
    assert out.digit_probs.shape == (len(x), 10)
    # PIL input gives the same predictions
    from PIL import Image

    pil = [Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for im in x[:8]]
    assert scorer(pil).digit.tolist() == out.digit[:8].tolist()


def test_generate_red_seven(pipe, scorer):
    g = torch.Generator().manual_seed(0)
    images = pipe(["a red seven"] * 2, num_inference_steps=10, generator=g, output_type="np").images
    assert images.shape == (2, 16, 16, 3)
    assert scorer(images).colour_names == ["red", "red"]
    mean_rgb = images.reshape(2, -1, 3).mean(1)
    assert (mean_rgb[:, 0] > 2 * mean_rgb[:, 1]).all() and (mean_rgb[:, 0] > 2 * mean_rgb[:, 2]).all()
