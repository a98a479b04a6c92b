"""The interop contract: through every diffusers LoRA operation a loaded removal stays in effect, or we say so loudly.

One parametrised matrix: operation x load mode (`adapters`, `merged`, `fused`) x without / with a user's own LoRA
("style", loaded before the removal, on the removal's layers and on one more). For each cell the effective weight of
every edited layer (the layer's own forward pass on an identity matrix, so PEFT's merge / active / disabled rules
all apply) is compared with what it must be: the base weight, plus the removal at the strength the cell expects,
plus each user LoRA at the weight diffusers documents for that operation. `pipe.unlearning` must tell the truth in
every cell, and `InteropWarning` must be raised exactly in the cells that take a removal out of effect.

The removal is synthetic (random low-rank factors on `attn2.to_k` / `attn2.to_v`, recorded for this base model):
what is tested is the LoRA mechanics, the same for any removal. One tiny pipeline and one removal per module;
each test works on a deep copy of its UNet.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from conftest import make_sd_pipeline
from diffusers import DiffusionPipeline, StableDiffusionPipeline
from synthetic import edited, lora_factors, synthetic_removal

import diffusers_unlearn as du

REMOVAL = "no-cat"
MODES = ["adapters", "merged", "fused"]


def _delta(weights: dict[str, torch.Tensor], layer: str) -> torch.Tensor:
    key = f"unet.{layer}.lora_"
    if key + "A.weight" not in weights:
        return torch.zeros(())
    return weights[key + "B.weight"] @ weights[key + "A.weight"]


@dataclass
class World:
    bases: dict[bool, object]  # user LoRA loaded? -> pipeline, with no removal
    removal: du.UnlearningAdapter
    loras: dict[str, dict[str, torch.Tensor]]  # user LoRAs: "style" (loaded in `bases[True]`), "extra"
    base_weights: dict[str, torch.Tensor]
    layers: list[str]  # the removal's layers, then the layer only the user's LoRAs touch
    removal_folder: str
    mode: str = "adapters"  # the cell's load mode, for operations that load again


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    pipe = make_sd_pipeline()
    unet = pipe.unet
    removal = synthetic_removal(pipe, "cat")
    user_only = next(name for name, _ in unet.named_modules() if name.endswith("attn1.to_q"))
    loras = {
        "style": lora_factors(unet, [*edited(pipe), user_only], 2, seed=2, relative=0.4),
        "extra": lora_factors(unet, [*edited(pipe), user_only], 2, seed=3, relative=0.3),
    }
    layers = [*edited(pipe), user_only]
    base_weights = {layer: unet.get_submodule(layer).weight.detach().clone() for layer in layers}
    folder = tmp_path_factory.mktemp("removal") / REMOVAL
    removal.save_pretrained(folder)
    with_style = copy.deepcopy(pipe)
    with_style.load_lora_weights(dict(loras["style"]), adapter_name="style")
    return World({False: pipe, True: with_style}, removal, loras, base_weights, layers, str(folder))


# ------------------------------------------------------------------------------------------- expectations
@dataclass
class Expect:
    """What a cell must show after the operation.

    removal: strength of the removal in the weights (1 in effect, 0 gone or disabled, 0.5 half).
    listed: `pipe.unlearning` lists the removal (False once it was unloaded).
    users: weight of each user LoRA in effect (`users_on_removal_layers` on the removal's layers, if it differs).
    warns: an `InteropWarning` is raised; raises: the operation raises this.
    reloaded: the operation returns another pipeline (save then load), checked instead.
    """

    removal: float = 1.0
    listed: bool = True
    users: dict[str, float] = field(default_factory=dict)
    users_on_removal_layers: dict[str, float] | None = None  # where they differ from `users`
    warns: bool = False
    raises: type[BaseException] | None = None


@dataclass
class Op:
    name: str
    run: Callable  # (pipe, world, tmp_path) -> a pipeline to check instead, or None
    expect: Callable[[str, bool], Expect]  # (mode, user) -> Expect
    before: bool = False  # run before the removal is loaded
    needs_user: bool = False


def style(user: bool, weight: float = 1.0) -> dict[str, float]:
    return {"style": weight} if user else {}


def _fuse_then(then):
    def run(pipe, world, tmp_path):
        pipe.fuse_lora()
        return then(pipe, world, tmp_path)

    return run


def _save_and_reload(pipe, world, tmp_path):
    pipe.save_pretrained(tmp_path / "saved")
    reloaded = StableDiffusionPipeline.from_pretrained(tmp_path / "saved")
    stack = du.UnlearningStack.from_pretrained(tmp_path / "saved" / "unlearning")
    assert stack.names == [REMOVAL]  # the provenance next to the weights
    return reloaded


def _to_half(pipe, world, tmp_path):
    pipe.register_modules(vae=copy.deepcopy(pipe.vae), text_encoder=copy.deepcopy(pipe.text_encoder))  # not shared
    pipe.to(torch.float16)


def _wrap(pipe):
    pipe.unet = torch.compile(pipe.unet)  # wraps only: nothing is compiled until the module is called


def _wrap_unload_reload(pipe, world, tmp_path):
    _wrap(pipe)
    pipe.unload_unlearning()
    assert pipe.unlearning == ()
    pipe.load_unlearning(world.removal, mode=world.mode)


OPS = [
    Op(
        "load_lora_weights before",
        lambda p, w, t: p.load_lora_weights(dict(w.loras["extra"]), adapter_name="extra"),
        lambda mode, user: Expect(users={"extra": 1.0}),  # diffusers: the last loaded LoRA alone is active
        before=True,
    ),
    Op(
        "load_lora_weights after",
        lambda p, w, t: p.load_lora_weights(dict(w.loras["extra"]), adapter_name="extra"),
        lambda mode, user: Expect(users={"extra": 1.0}),
    ),
    Op(
        "load_lora_weights(removal folder)",
        lambda p, w, t: p.load_lora_weights(w.removal_folder, adapter_name="again"),
        lambda mode, user: Expect(users=style(user), raises=du.InteropError),
    ),
    Op(
        "set_adapters(user names)",
        lambda p, w, t: p.set_adapters(["style"] if "style" in p.get_list_adapters().get("unet", []) else []),
        lambda mode, user: Expect(users=style(user)),
    ),
    Op(
        "set_adapters(user, weight 0.5)",
        lambda p, w, t: p.set_adapters(["style"], adapter_weights=[0.5]),
        lambda mode, user: Expect(users=style(user, 0.5)),
        needs_user=True,
    ),
    Op(
        "set_adapters(removal, weight 1)",
        lambda p, w, t: p.set_adapters([REMOVAL], adapter_weights=[1.0]),
        lambda mode, user: Expect(),  # diffusers: only the named adapters are active; the user's LoRA is not named
    ),
    Op(
        "set_adapters(removal, weight 0.5)",
        lambda p, w, t: p.set_adapters([REMOVAL], adapter_weights=[0.5]),
        lambda mode, user: Expect(removal=1.0 if mode == "fused" else 0.5, warns=True),
    ),
    Op(
        "disable_lora",
        lambda p, w, t: p.disable_lora(),
        lambda mode, user: Expect(removal=1.0 if mode == "fused" else 0.0, warns=mode != "fused"),
    ),
    Op(
        "disable_lora + enable_lora",
        lambda p, w, t: (p.disable_lora(), p.enable_lora()),
        lambda mode, user: Expect(users=style(user), warns=mode != "fused"),
    ),
    Op(
        "delete_adapters(user)",
        lambda p, w, t: p.delete_adapters("style"),
        lambda mode, user: Expect(),
        needs_user=True,
    ),
    Op(
        "fuse_lora + delete_adapters(user) + unload_unlearning",
        _fuse_then(lambda p, w, t: (p.delete_adapters("style"), p.unload_unlearning())),
        # PEFT leaves a deleted adapter's merged delta in the weight: the user's fused LoRA stays, ours goes
        lambda mode, user: Expect(removal=0.0, listed=False, users=style(user)),
        needs_user=True,
    ),
    Op(
        "delete_adapters(removal)",
        lambda p, w, t: p.delete_adapters(REMOVAL),
        lambda mode, user: Expect(removal=0.0, listed=False, users=style(user), warns=True),
    ),
    Op("fuse_lora()", lambda p, w, t: p.fuse_lora(), lambda mode, user: Expect(users=style(user))),
    Op(
        "fuse_lora(adapter_names=[user])",
        lambda p, w, t: p.fuse_lora(adapter_names=["style"]),
        lambda mode, user: Expect(users=style(user)),
        needs_user=True,
    ),
    Op(
        "fuse_lora(adapter_names=[removal])",
        lambda p, w, t: p.fuse_lora(adapter_names=[REMOVAL]),
        # PEFT applies no unmerged adapter in a layer that has a merged one: as with diffusers alone, the user's
        # unfused LoRA stops acting on the layers the fused removal shares with it
        lambda mode, user: Expect(users=style(user), users_on_removal_layers={} if mode != "fused" else None),
    ),
    Op(
        "fuse_lora(lora_scale=0.5)",
        lambda p, w, t: p.fuse_lora(lora_scale=0.5),
        lambda mode, user: Expect(users=style(user, 0.5)),
    ),
    Op(
        "fuse_lora + unfuse_lora",
        _fuse_then(lambda p, w, t: p.unfuse_lora()),
        lambda mode, user: Expect(users=style(user)),
    ),
    Op(
        "fuse_lora + unload_unlearning",
        _fuse_then(lambda p, w, t: p.unload_unlearning()),
        lambda mode, user: Expect(removal=0.0, listed=False, users=style(user)),
    ),
    Op(
        "unload_lora_weights",
        lambda p, w, t: p.unload_lora_weights(),
        lambda mode, user: Expect(),  # the user's LoRAs are unloaded, the removal stays
    ),
    Op(
        "fuse_lora + unload_lora_weights",
        _fuse_then(lambda p, w, t: p.unload_lora_weights()),
        lambda mode, user: Expect(users=style(user)),  # diffusers: fused LoRAs stay in the weights
    ),
    Op(
        "fuse_lora + unload_lora_weights + unload_unlearning",
        _fuse_then(lambda p, w, t: (p.unload_lora_weights(), p.unload_unlearning())),
        lambda mode, user: Expect(removal=0.0, listed=False, users=style(user)),
    ),
    Op(
        "pipe.to(float16)",
        _to_half,
        lambda mode, user: Expect(users=style(user)),
    ),
    Op("wrapped unet (torch.compile)", lambda p, w, t: _wrap(p), lambda mode, user: Expect(users=style(user))),
    Op(
        "wrapped unet + unload_unlearning",
        lambda p, w, t: (_wrap(p), p.unload_unlearning()),
        lambda mode, user: Expect(removal=0.0, listed=False, users=style(user)),
    ),
    Op(
        "wrapped unet + unload + load again",
        _wrap_unload_reload,
        lambda mode, user: Expect(users=style(user)),
    ),
    Op(
        "save_pretrained + from_pretrained",
        _save_and_reload,
        lambda mode, user: (
            Expect(listed=False) if mode == "fused" and not user else Expect(users=style(user), raises=du.InteropError)
        ),
    ),
]

CASES = [
    pytest.param(op, mode, user, id=f"{op.name}-{mode}-{'user-lora' if user else 'no-user-lora'}")
    for op in OPS
    for mode in MODES
    for user in (False, True)
    if user or not op.needs_user
]


def _effective(module) -> torch.Tensor:
    """The weight a layer applies now, measured through its own forward pass (PEFT's rules included)."""
    inner = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    eye = torch.eye(inner.in_features, dtype=inner.weight.dtype)
    with torch.no_grad():
        return module(eye).float().T


@pytest.mark.parametrize("op, mode, user", CASES)
def test_removal_stays_in_effect_or_we_say_so(world, op, mode, user, tmp_path):
    base = world.bases[user]  # only the UNet is edited: copy it, share the other components
    pipe = StableDiffusionPipeline(
        **{**base.components, "unet": copy.deepcopy(base.unet)}, requires_safety_checker=False
    )
    world.mode = mode
    if op.before:
        op.run(pipe, world, tmp_path)
    pipe.load_unlearning(world.removal, mode=mode)
    expect = op.expect(mode, user)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if op.before:
            result = None
        elif expect.raises is not None:
            with pytest.raises(expect.raises):
                op.run(pipe, world, tmp_path)
            result = None
        else:
            result = op.run(pipe, world, tmp_path)
    loud = [w for w in caught if issubclass(w.category, du.InteropWarning)]
    assert bool(loud) == expect.warns, [str(w.message) for w in loud]
    for warning in loud:
        assert REMOVAL in str(warning.message)  # names the removal
    if expect.raises is du.InteropError:
        assert not (tmp_path / "saved").exists()  # refused: nothing written
    pipe = result if isinstance(result, DiffusionPipeline) else pipe

    unet = getattr(pipe.unet, "_orig_mod", pipe.unet)
    half = unet.dtype == torch.float16
    for layer in world.layers:
        expected = world.base_weights[layer] + expect.removal * _delta(world.removal.lora_weights, layer)
        users = expect.users
        if expect.users_on_removal_layers is not None and layer in world.removal.layer_names:
            users = expect.users_on_removal_layers
        for name, weight in users.items():
            expected = expected + weight * _delta(world.loras[name], layer)
        actual = _effective(unet.get_submodule(layer))
        tolerance = (4e-3 if half else 1e-4) * float(expected.norm())
        assert float((actual - expected).norm()) <= tolerance, f"{layer}: {float((actual - expected).norm())}"

    if expect.listed:
        assert [(u.name, u.verified) for u in pipe.unlearning] == [(REMOVAL, expect.removal == 1.0)]
    else:
        assert pipe.unlearning == ()
