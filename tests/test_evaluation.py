"""`diffusers_unlearn.evaluation`: seeded generation, per-concept rates, pluggable scorers."""

import numpy as np
import pytest
import torch
from conftest import TOKENIZER
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from diffusers_unlearn.evaluation import (
    CLIPConceptScorer,
    ConceptProbe,
    ConceptScorer,
    evaluate,
    generate_images,
)

STEPS = {"num_inference_steps": 2}


class BrightnessScorer:
    """Test scorer: an image 'shows' its check when its mean brightness is above the check's threshold."""

    def shows(self, images, checks):
        return np.array([images[i].mean() > t for i, t in enumerate(checks)])


def test_generation_is_seeded_per_image(sd_pipe):
    both = generate_images(sd_pipe, ["a cat", "a dog"], images_per_prompt=3, batch_size=4, progress=False, **STEPS)
    alone = generate_images(sd_pipe, ["a dog"], images_per_prompt=3, batch_size=2, progress=False, **STEPS)
    assert both.shape == (6, 16, 16, 3)
    np.testing.assert_allclose(both[3:], alone, atol=1e-5)  # same seeds whatever the batching
    assert not np.allclose(both[3], both[4])  # different seeds within a prompt


def test_rates_per_group_and_concept(sd_pipe):
    images = generate_images(sd_pipe, ["a cat", "a dog"], images_per_prompt=4, progress=False, **STEPS)
    middle = float(np.median(images.reshape(8, -1).mean(1)))
    cat = ConceptProbe("cat", ("a cat",), 0.0)  # always shown
    dog = ConceptProbe("dog", ("a dog",), 2.0)  # never shown
    both = ConceptProbe("both", ("a cat", "a dog"), middle)
    scorer = BrightnessScorer()
    assert isinstance(scorer, ConceptScorer)
    result = evaluate(sd_pipe, scorer, forget=[cat], related=[dog], general=[both], images_per_prompt=4, **STEPS)
    assert result.forget == {"cat": 1.0} and result.related == {"dog": 0.0}
    assert 0 < result.general["both"] < 1
    assert result.summary()["forget_accuracy"] == 1.0
    assert np.isnan(evaluate(sd_pipe, scorer, images_per_prompt=1, **STEPS).forget_accuracy)


def test_clip_scorer_with_a_tiny_random_clip():
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
                     "vocab_size": 380, "max_position_embeddings": 24, "bos_token_id": 378, "eos_token_id": 379,
                     "pad_token_id": 379},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )  # fmt: skip
    scorer = CLIPConceptScorer(CLIPModel(config), CLIPTokenizer.from_pretrained(TOKENIZER))
    images = np.random.default_rng(0).random((6, 16, 16, 3), dtype=np.float32)
    checks = [("a photo of a cat", ["a photo of a dog"])] * 3 + [("a photo of a dog", ["a photo of a cat"])] * 3
    shows = scorer.shows(images, checks)
    assert shows.dtype == bool and shows.shape == (6,)
    # the two checks are complementary: exactly one of them holds for each image
    assert np.array_equal(shows[:3], ~scorer.shows(images[:3], checks[3:]))


@pytest.mark.parametrize("count", [0, 1])
def test_empty_prompts(sd_pipe, count):
    images = generate_images(sd_pipe, ["a cat"] * count, images_per_prompt=2, progress=False, **STEPS)
    assert len(images) == 2 * count
