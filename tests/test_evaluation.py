"""`diffusers_unlearn.evaluation`: seeded generation, per-concept rates, pluggable scorers."""

import numpy as np
import pytest
import torch
from conftest import TOKENIZER
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from diffusers_unlearn.errors import InvalidArgumentError
from diffusers_unlearn.evaluation import (
    AttributeConceptScorer,
    CLIPConceptScorer,
    ConceptProbe,
    ConceptScorer,
    EvaluationResult,
    evaluate,
    generate_images,
    paired_change,
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
    # each concept's images, in order: what paired_change compares
    assert result.shown["cat"].tolist() == [True] * 4 and result.shown["dog"].tolist() == [False] * 4
    assert result.shown["both"].shape == (8,) and result.shown["both"].mean() == result.general["both"]
    assert result.misread == {}  # a scorer that reads no attributes says nothing about what a lost image shows


def test_a_lost_image_says_what_it_shows_instead(sd_pipe):
    def bright(images):  # an attribute scorer: is each image brighter than the middle of these images?
        means = images.reshape(len(images), -1).mean(1)
        return {"bright": [bool(m > np.median(means)) for m in means], "kind": ["image"] * len(images)}

    probe = ConceptProbe("cat", ("a cat", "a dog"), {"bright": True, "kind": "image"})
    result = evaluate(sd_pipe, AttributeConceptScorer(bright), general=[probe], images_per_prompt=4, **STEPS)
    misread = result.misread["cat"]
    assert len(misread) == 8 and 0 < sum(result.shown["cat"]) < 8
    assert [m == {} for m in misread] == result.shown["cat"].tolist()  # read otherwise exactly where not shown
    assert all(m == {"bright": False} for m, shown in zip(misread, result.shown["cat"], strict=True) if not shown)


def test_paired_change_tells_a_loss_from_a_reshuffle():
    def shown(**images):
        return EvaluationResult(shown={k: np.array(v, dtype=bool) for k, v in images.items()})

    before = shown(a=[1] * 10 + [0] * 10, b=[1] * 10 + [0] * 10)
    reshuffled = shown(a=[0] * 5 + [1] * 5 + [1] * 5 + [0] * 5, b=[1] * 10 + [0] * 10)  # 5 lost, 5 gained
    change = paired_change(before, reshuffled)
    assert (change.lost, change.gained, change.images) == (5, 5, 40)
    assert change.p_value > 0.5  # same retention, nothing lost beyond chance
    worn = shown(a=[0] * 8 + [1] * 2 + [0] * 10, b=[0] * 4 + [1] * 6 + [0] * 10)  # 12 lost, none gained
    change = paired_change(before, worn)
    assert (change.lost, change.gained) == (12, 0)
    assert change.p_value == pytest.approx(0.5**12)
    assert paired_change(before, worn, concepts=["b"]).lost == 4
    assert paired_change(before, before).p_value == 1.0  # no image changed
    with pytest.raises(InvalidArgumentError, match="not in both"):
        paired_change(before, shown(a=[1] * 20))
    with pytest.raises(InvalidArgumentError, match="same prompts"):
        paired_change(before, shown(a=[1] * 10, b=[1] * 20))


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


def test_world_scorers_live_in_their_worlds_with_deprecated_aliases_here():
    """docs/api.md showed `from diffusers_unlearn.evaluation import DigitsConceptScorer`: it still works, warning."""
    from diffusers_unlearn import digits, evaluation, glyphs

    with pytest.warns(FutureWarning, match=r"moved to diffusers_unlearn\.digits"):
        from diffusers_unlearn.evaluation import DigitsConceptScorer
    with pytest.warns(FutureWarning, match=r"moved to diffusers_unlearn\.glyphs"):
        assert evaluation.GlyphsConceptScorer is glyphs.GlyphsConceptScorer
    assert DigitsConceptScorer is digits.DigitsConceptScorer
    with pytest.raises(AttributeError):
        evaluation.NoSuchScorer  # noqa: B018


def test_the_core_imports_no_world():
    """World code (digits, glyphs) lives in its package: no module outside them imports one, except the two entry
    points that offer a world by name (`diffusers-unlearn --model digits`, `python -m diffusers_unlearn.demo`)."""
    import ast
    from pathlib import Path

    import diffusers_unlearn

    root = Path(diffusers_unlearn.__file__).parent
    entry_points = {"cli.py", "demo.py"}
    offenders = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if relative.split("/")[0] in ("digits", "glyphs") or relative in entry_points:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else []
            if any(part in ("digits", "glyphs") for name in names for part in name.split(".")):
                offenders.append(f"{relative}:{node.lineno}")
    assert not offenders, f"core modules import a world: {offenders}"
