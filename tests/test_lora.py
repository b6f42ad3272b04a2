"""LoRA (``model.lora``): adapters beside a loaded model's linear layers train alone with the head,
fold into the weights for inference with the same outputs, and a LoRA run is a start like any run."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import quick_train, write_csv

import layerwise
from layerwise import ConfigError
from layerwise.models.lora import LoRALinear, merge_lora

FT = {"family": "ft_transformer", "d_token": 8, "heads": 2, "blocks": 1}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A pretrained ft_transformer, and a LoRA fine-tuning of it on the same table."""
    folder = tmp_path_factory.mktemp("lora")
    data = {"source": "csv", "path": str(write_csv(folder, n=120)), "target": "target"}
    source = layerwise.train({"name": "source", "data": data, "model": FT, "train": quick_train(epochs=2, lr=0.01),
                              "evaluate": {"baselines": False}}, runs_dir=folder / "runs", quiet=True)
    tuned = layerwise.train({"name": "tuned", "data": data, "evaluate": {"baselines": False},
                             "model": {**FT, "init_from": str(source.path), "lora": {"rank": 2}},
                             "train": quick_train(epochs=2, lr=0.05)}, runs_dir=folder / "runs", quiet=True)
    return source, tuned


def test_merging_folds_the_adapters_in_with_the_same_outputs():
    from layerwise.data.spec import DataSpec
    from layerwise.models import build_model
    from layerwise.runs.config import load_config

    spec = DataSpec(kind="tabular", input_shape=(3,), target="class", num_classes=2, numeric=[0, 1, 2])
    config = load_config({"model": {**FT, "lora": {"rank": 2, "alpha": 4}}}).model
    model = build_model(config, spec).eval()
    adapted = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert len(adapted) == 4  # c_attn, c_proj of the attention; c_fc, c_proj of the feed-forward
    x = torch.randn(5, 3)
    before = model(x)
    for layer in adapted:  # B starts at zero: the adapted model starts as the loaded one; move it away
        torch.nn.init.normal_(layer.lora_B)
    adapted_out = model(x)
    assert not torch.allclose(before, adapted_out)
    merged = merge_lora(copy.deepcopy(model))
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(merged(x), adapted_out, atol=1e-5, rtol=1e-5)


def test_only_the_adapters_and_the_head_learn_and_the_saved_run_keeps_them_apart(runs):
    from safetensors.torch import load_file

    source, tuned = runs
    start = load_file(str(source.path / "model.safetensors"))
    saved = load_file(str(tuned.path / "model.safetensors"))
    adapters = [name for name in saved if "lora_" in name]
    assert len(adapters) == 8 and all(name not in start for name in adapters)
    for name, tensor in start.items():
        if name.startswith("head."):
            assert not torch.equal(saved[name], tensor), name  # the head learnt
        else:
            assert torch.equal(saved[name], tensor), name  # everything else is the loaded model, bit for bit
    assert any(not torch.equal(saved[n], torch.zeros_like(saved[n])) for n in adapters if n.endswith("lora_B"))


def test_a_loaded_lora_run_predicts_merged_and_exports_the_same(runs):
    source, tuned = runs
    model = layerwise.load_run(tuned.path).model
    assert not any(isinstance(m, LoRALinear) for m in model.modules())  # folded in for inference
    x = tuned.preprocessing.inputs.batch(tuned.data.test.x[:6]).float()
    with torch.no_grad():
        torch.testing.assert_close(model(x), tuned.model(x))
    ort = pytest.importorskip("onnxruntime")
    result = tuned.export("onnx")
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), model(x).detach(), atol=1e-4, rtol=1e-4)


def test_a_lora_run_is_a_start_with_its_adapters_folded_in(runs, tmp_path):
    from layerwise.models import build_model
    from layerwise.models.transfer import load_initial_weights

    _, tuned = runs
    plain = build_model(tuned.config.model.model_copy(update={"lora": None, "init_from": None}), tuned.spec)
    assert load_initial_weights(plain, tuned.path) == []
    x = tuned.preprocessing.inputs.batch(tuned.data.test.x[:6]).float()
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), tuned.model(x), atol=1e-5, rtol=1e-5)


def test_a_target_naming_no_linear_layer_is_one_line(tmp_path):
    from layerwise.runs.config import load_config
    from layerwise.runs.prepare import prepare

    data = {"source": "csv", "path": str(write_csv(tmp_path, n=40)), "target": "target"}
    with pytest.raises(ConfigError, match=r"model.lora.targets: '\*qkv' matches no linear layer of this model; "
                                          r"its linear layers are .*c_attn") as info:
        prepare(load_config({"data": data, "model": {**FT, "lora": {"targets": ["*qkv"]}}}))
    assert "\n" not in str(info.value)
