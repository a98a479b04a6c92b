"""`peft_inject`: adding adapters to layers PEFT has wrapped already leaves the model exactly as diffusers + PEFT do.

Each test builds two identical tiny UNets (or pipelines) and loads the same adapters on both: one through diffusers'
`load_lora_adapter` (PEFT's `inject_adapter_in_model` and `set_peft_model_state_dict`), one through the fast path,
then compares everything a user or diffusers can observe: the configs, the module tree, every parameter (value,
dtype, `requires_grad`), every LoRA layer's bookkeeping, the random number generator, and the model's output; and
again after diffusers' `set_adapters`, `delete_adapters`, `fuse_lora` and `unload_lora`.
"""

import copy

import pytest
import torch
from conftest import make_sd_pipeline
from peft.tuners.tuners_utils import BaseTunerLayer
from synthetic import synthetic_removal

import diffusers_unlearn as du
from diffusers_unlearn import peft_inject
from diffusers_unlearn.errors import VerificationError

# bookkeeping of a LoRA layer that is not a module or a parameter (those are compared through the module tree)
_LAYER_STATE = ("r", "lora_alpha", "scaling", "use_dora", "use_rslora", "lora_bias", "merged_adapters", "kwargs")


def _linear_layers(unet, count):
    return [name for name, module in unet.named_modules() if isinstance(module, torch.nn.Linear)][:count]


def _lora(unet, layers, rank, seed, ranks=None):
    """A diffusers LoRA state dict on `layers` (rank per layer from `ranks`, else `rank`)."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for layer in layers:
        module = unet.get_submodule(layer)
        r = (ranks or {}).get(layer, rank)
        weights[f"unet.{layer}.lora_A.weight"] = torch.randn(r, module.in_features, generator=generator)
        weights[f"unet.{layer}.lora_B.weight"] = torch.randn(module.out_features, r, generator=generator) / 10
    return weights


def _inputs():
    generator = torch.Generator().manual_seed(0)
    return dict(
        sample=torch.randn(2, 4, 8, 8, generator=generator),
        timestep=torch.tensor(10),
        encoder_hidden_states=torch.randn(2, 5, 32, generator=generator),
    )


def _output(unet):
    inputs = {key: value.to(unet.dtype) if value.is_floating_point() else value for key, value in _inputs().items()}
    with torch.no_grad():
        return unet(**inputs, return_dict=False)[0]


def assert_same_state(stock, fast):
    """Everything observable about two models' PEFT state is equal (bit for bit where it is a tensor)."""
    assert getattr(stock, "peft_config", None) == getattr(fast, "peft_config", None)
    assert list(getattr(stock, "peft_config", {})) == list(getattr(fast, "peft_config", {}))
    assert getattr(stock, "_hf_peft_config_loaded", None) == getattr(fast, "_hf_peft_config_loaded", None)
    stock_modules, fast_modules = list(stock.named_modules()), list(fast.named_modules())
    assert [(n, type(m), m.training) for n, m in stock_modules] == [(n, type(m), m.training) for n, m in fast_modules]
    for (name, a), (_, b) in zip(stock_modules, fast_modules, strict=True):
        if isinstance(a, BaseTunerLayer):
            for attribute in _LAYER_STATE:
                assert getattr(a, attribute) == getattr(b, attribute), (name, attribute)
            assert a.active_adapters == b.active_adapters, name
            assert a.disable_adapters == b.disable_adapters, name
            assert list(a.lora_variant) == list(b.lora_variant), name
            for container in ("lora_A", "lora_B", "lora_dropout"):
                assert list(getattr(a, container)) == list(getattr(b, container)), (name, container)
    stock_parameters, fast_parameters = dict(stock.named_parameters()), dict(fast.named_parameters())
    assert list(stock_parameters) == list(fast_parameters)
    for name, a in stock_parameters.items():
        b = fast_parameters[name]
        assert (a.dtype, a.device, a.requires_grad) == (b.dtype, b.device, b.requires_grad), name
        assert torch.equal(a, b), name
    assert torch.equal(_output(stock), _output(fast))


@pytest.fixture
def unets(monkeypatch):
    """Two identical tiny UNets and a record of which adapters the fast path added."""
    stock = make_sd_pipeline().unet
    fast = copy.deepcopy(stock)
    added = []
    original = peft_inject.add_to_wrapped_layers

    def spy(model, state_dict, *, prefix, adapter_name):
        result = original(model, state_dict, prefix=prefix, adapter_name=adapter_name)
        if result:
            added.append(adapter_name)
        return result

    monkeypatch.setattr(peft_inject, "add_to_wrapped_layers", spy)
    return stock, fast, added


def _load_both(stock, fast, weights, name, seed):
    torch.manual_seed(seed)  # the initial (overwritten) LoRA weights are drawn: both paths must draw the same
    stock.load_lora_adapter({k: v.clone() for k, v in weights.items()}, prefix="unet", adapter_name=name)
    stock_rng = torch.get_rng_state()
    torch.manual_seed(seed)
    peft_inject.load_lora_adapter(fast, {k: v.clone() for k, v in weights.items()}, prefix="unet", adapter_name=name)
    assert torch.equal(stock_rng, torch.get_rng_state())


def test_adapters_added_like_peft(unets):
    stock, fast, added = unets
    layers = _linear_layers(stock, 24)  # >= 20 targets: PEFT condenses the target list, so must the fast path
    varied = {layer: 2 for layer in layers[::3]}  # per-layer ranks: a rank and alpha pattern in the config
    loads = [
        ("first", _lora(stock, layers, 4, seed=1)),
        ("second", _lora(stock, layers, 4, seed=2)),
        ("patterned", _lora(stock, layers, 4, seed=3, ranks=varied)),
        ("fewer-layers", _lora(stock, layers[:5], 3, seed=4)),  # a subset of the wrapped layers, not condensed
        ("third", _lora(stock, layers, 8, seed=5)),
    ]
    for seed, (name, weights) in enumerate(loads):
        _load_both(stock, fast, weights, name, seed)
        assert_same_state(stock, fast)
    assert added == [name for name, _ in loads[1:]]  # the first wraps the layers (PEFT), every other is fast
    assert fast.peft_config["second"].target_modules != set(layers)  # condensed, as PEFT does

    for model in (stock, fast):
        model.set_adapters(["second", "patterned", "third"], weights=[1.0, 0.5, 0.25])
    assert_same_state(stock, fast)
    for model in (stock, fast):
        model.delete_adapters(["patterned", "first"])
    assert_same_state(stock, fast)
    for model in (stock, fast):
        model.fuse_lora(lora_scale=0.7, adapter_names=["second"])
    assert_same_state(stock, fast)
    for model in (stock, fast):
        model.unfuse_lora()
        model.unload_lora()
    assert_same_state(stock, fast)
    assert not any(isinstance(m, BaseTunerLayer) for m in fast.modules())


def test_adapters_cast_to_the_layers_dtype(unets):
    stock, fast, added = unets
    stock.to(torch.bfloat16)
    fast.to(torch.bfloat16)
    layers = _linear_layers(stock, 6)
    for seed in range(3):
        _load_both(stock, fast, _lora(stock, layers, 4, seed=seed), f"adapter{seed}", seed)
    assert added == ["adapter1", "adapter2"]
    assert fast.get_submodule(layers[0]).lora_A["adapter2"].weight.dtype == torch.bfloat16
    assert_same_state(stock, fast)


def test_unwrapped_layer_goes_through_diffusers(unets):
    stock, fast, added = unets
    layers = _linear_layers(stock, 6)
    _load_both(stock, fast, _lora(stock, layers[:3], 4, seed=1), "first", seed=0)
    _load_both(stock, fast, _lora(stock, layers, 4, seed=2), "wider", seed=1)  # three layers not wrapped yet
    _load_both(stock, fast, _lora(stock, layers, 4, seed=3), "third", seed=2)
    assert added == ["third"]
    assert_same_state(stock, fast)


def test_failure_leaves_the_model_as_it_was(unets, monkeypatch):
    stock, fast, added = unets
    layers = _linear_layers(stock, 4)
    _load_both(stock, fast, _lora(stock, layers, 4, seed=1), "first", seed=0)
    calls = []

    def failing(layer, adapter_name, config, key):
        calls.append(key)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        original(layer, adapter_name, config, key)

    original = peft_inject._update_layer
    monkeypatch.setattr(peft_inject, "_update_layer", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        peft_inject.load_lora_adapter(fast, _lora(stock, layers, 4, seed=2), prefix="unet", adapter_name="second")
    assert_same_state(stock, fast)


def _pipes(monkeypatch, count):
    """Two identical tiny pipelines, `count` removals for them, and a switch that sends one to PEFT's own path."""
    stock, fast = make_sd_pipeline(), make_sd_pipeline()
    removals = [synthetic_removal(stock, f"concept{i}", seed=i) for i in range(count)]
    original = peft_inject.add_to_wrapped_layers

    def only_fast(model, state_dict, *, prefix, adapter_name):
        return model is fast.unet and original(model, state_dict, prefix=prefix, adapter_name=adapter_name)

    monkeypatch.setattr(peft_inject, "add_to_wrapped_layers", only_fast)
    return stock, fast, removals


def test_load_unlearning_same_as_peft_path(monkeypatch):
    stock, fast, removals = _pipes(monkeypatch, 6)
    for pipe in (stock, fast):
        torch.manual_seed(0)
        loaded = du.load_unlearning(pipe, removals)
        assert len(loaded) == 6 and all(entry.verified for entry in loaded)
    assert_same_state(stock.unet, fast.unet)
    assert stock.unlearning == fast.unlearning
    assert stock.get_list_adapters() == fast.get_list_adapters()

    for pipe in (stock, fast):  # guarded: the removals stay active at full strength next to the user's choice
        pipe.set_adapters(["no-concept1"])
    assert_same_state(stock.unet, fast.unet)
    for pipe in (stock, fast):
        with pytest.warns(du.InteropWarning):
            pipe.delete_adapters(["no-concept2"])
    assert_same_state(stock.unet, fast.unet)
    assert [e.name for e in fast.unlearning] == [r.name for r in removals if r.name != "no-concept2"]
    for pipe in (stock, fast):
        pipe.unload_unlearning(["no-concept0", "no-concept4"])
    assert_same_state(stock.unet, fast.unet)
    for pipe in (stock, fast):
        pipe.unload_unlearning()
    assert_same_state(stock.unet, fast.unet)
    assert fast.unlearning == () and not hasattr(fast.unet, "peft_config")


def test_load_unlearning_rolls_back_a_failure_in_the_fast_path(monkeypatch):
    stock, fast, removals = _pipes(monkeypatch, 4)
    du.load_unlearning(fast, removals[:1])
    du.load_unlearning(stock, removals[:1])
    original, calls = peft_inject._update_layer, []

    def corrupting(layer, adapter_name, config, key):  # the layers would not carry the removal: verification fails
        original(layer, adapter_name, config, key)
        calls.append(key)
        layer.scaling[adapter_name] = 2.0

    monkeypatch.setattr(peft_inject, "_update_layer", corrupting)
    with pytest.raises(VerificationError):
        du.load_unlearning(fast, removals[1:])
    assert calls  # the fast path ran
    assert_same_state(stock.unet, fast.unet)
    assert fast.unlearning == stock.unlearning and [e.name for e in fast.unlearning] == [removals[0].name]


def test_fast_path_off_where_it_would_differ_from_peft(unets, monkeypatch):
    """The check made once per process catches an `update_layer` that no longer matches (as another PEFT version
    could): every load then goes through diffusers."""
    stock, fast, added = unets
    original = peft_inject._update_layer

    def other_scaling(layer, adapter_name, config, key):
        original(layer, adapter_name, config, key)
        layer.scaling[adapter_name] *= 2

    monkeypatch.setattr(peft_inject, "_update_layer", other_scaling)
    peft_inject._matches_peft.cache_clear()
    try:
        assert not peft_inject._matches_peft()
        layers = _linear_layers(stock, 4)
        for seed in range(3):
            _load_both(stock, fast, _lora(stock, layers, 4, seed=seed), f"adapter{seed}", seed)
        assert added == []
        assert_same_state(stock, fast)
    finally:
        peft_inject._matches_peft.cache_clear()
