"""The model contract, checked on every registered family at once, plus the bring-your-own family."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import quick_train, write_yaml
from torch import nn

import layerwise
from layerwise import FAMILIES, ModelError
from layerwise.data.spec import DataSpec
from layerwise.models import LayerwiseModel, build_model, describe_family, is_generative

SPECS = {
    "image": DataSpec(kind="image", input_shape=(1, 8, 8), target="class", num_classes=3,
                      class_names=["a", "b", "c"]),
    "rgb": DataSpec(kind="image", input_shape=(3, 12, 10), target="numeric", num_targets=2),
    "tabular": DataSpec(kind="tabular", input_shape=(5,), target="class", num_classes=4),
    "tabular_embedded": DataSpec(kind="tabular", input_shape=(4,), target="numeric", num_targets=1,
                                 categorical=[(3, 6)]),
    # a row as the tabular preprocessing lays it out: scalars (one with quantile bins that repeat, one
    # with none recorded), a one-hot group, and two embedding indices
    "tabular_layout": DataSpec(kind="tabular", input_shape=(9,), target="class", num_classes=3,
                               numeric=[0, 1, 2, 8], onehot=[(3, 3)], categorical=[(6, 5), (7, 2)],
                               bins=[[-1.0, -0.2, 0.4, 1.5], [-2.0, 0.0, 0.0, 2.0], [], [0.0, 1.0]]),
    "tabular_layout_regression": DataSpec(kind="tabular", input_shape=(6,), target="numeric", num_targets=2,
                                          numeric=[0, 5], onehot=[(1, 2), (3, 2)],
                                          bins=[[-1.0, 0.0, 1.0], [-3.0, -1.0, 1.0, 3.0]]),
    "sequence": DataSpec(kind="sequence", input_shape=(12, 3), target="class", num_classes=3),
    "tokens": DataSpec(kind="tokens", input_shape=(10,), target="numeric", num_targets=1, vocab_size=17),
    # (T, C, H, W) normalized frames: randn inputs like images
    "video": DataSpec(kind="video", input_shape=(3, 2, 6, 6), target="numeric", num_targets=2),
}


def _inputs(spec: DataSpec, batch: int = 4) -> torch.Tensor:
    if spec.kind == "tokens":  # integer ids in [0, vocab_size)
        return torch.randint(0, spec.vocab_size, (batch, *spec.input_shape), generator=torch.Generator().manual_seed(0))
    x = torch.randn(batch, *spec.input_shape, generator=torch.Generator().manual_seed(0))
    for position, cardinality in spec.categorical:
        x[:, position] = torch.arange(batch) % cardinality  # integer codes in embedding columns
    for start, width in spec.onehot:  # one level set per one-hot group
        x[:, start:start + width] = torch.eye(width)[torch.arange(batch) % width]
    return x


def _cases() -> list[tuple[str, str]]:
    cases = []
    for name, cls in FAMILIES.items():
        if name == "python":
            continue  # needs a user module: tested below
        if is_generative(cls):
            continue  # generative families (vae, gan, ...): no classifier head; their own test files
        for spec_name, spec in SPECS.items():
            if spec.kind in cls.accepts:
                cases.append((name, spec_name))
    return cases


CASES = _cases()


# the families whose defaults are too large for dozens of contract cases in seconds: tiny settings here,
# their defaults built once each in test_large_defaults_build_and_run
TINY = {"resmlp": {"width": 8, "blocks": 1}, "ft_transformer": {"d_token": 8, "blocks": 1, "heads": 2},
        "tabm": {"k": 2, "width": 8, "blocks": 1, "embedding_dim": 4}}


def _build(family: str, spec_name: str) -> tuple[LayerwiseModel, DataSpec]:
    torch.manual_seed(0)
    spec = SPECS[spec_name]
    config = FAMILIES.get(family).Config(**TINY.get(family, {}))  # each family's defaults must be buildable
    return build_model(config, spec), spec


def test_every_family_is_covered():
    covered = {family for family, _ in CASES}
    generative = {name for name, cls in FAMILIES.items() if is_generative(cls)}
    missing = set(FAMILIES.names()) - {"python"} - generative - covered
    assert not missing, f"add a tiny DataSpec of the input kind these families accept to SPECS: {sorted(missing)}"
    assert {"cnn", "mlp", "resnet", "python"} <= set(FAMILIES.names())


@pytest.mark.parametrize("family", sorted(TINY))
def test_large_defaults_build_and_run(family):
    spec = SPECS["tabular_layout"]
    model = build_model(FAMILIES.get(family).Config(), spec).eval()
    with torch.no_grad():
        assert model(_inputs(spec)).shape == (4, spec.num_outputs)


@pytest.mark.parametrize("family, spec_name", CASES)
def test_forward_shape_finite_and_backward(family, spec_name):
    model, spec = _build(family, spec_name)
    model.train()
    x = _inputs(spec)
    out = model(x)
    # the ensemble contract: k > 1 members give (B, k, outputs) in training mode, (B, outputs) in eval
    expected = (4, model.members, spec.num_outputs) if model.members > 1 else (4, spec.num_outputs)
    assert out.shape == expected
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert params
    for name, p in params:
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
    assert model.head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("family, spec_name", CASES)
def test_forward_is_head_of_features(family, spec_name):
    model, spec = _build(family, spec_name)
    model.eval()
    x = _inputs(spec)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (4, model.num_features)
        assert torch.allclose(model(x), model.forward_head(features), atol=1e-6)


@pytest.mark.parametrize("family, spec_name", CASES)
def test_config_round_trip_builds_the_same_model(family, spec_name):
    model, spec = _build(family, spec_name)
    cls = FAMILIES.get(family)
    again = cls.Config.model_validate(model.config.model_dump())
    assert again == model.config
    assert cls.Config.model_validate_json(model.config.model_dump_json()) == model.config
    rebuilt = build_model(again, spec)
    assert [(n, p.shape) for n, p in rebuilt.state_dict().items()] == \
           [(n, p.shape) for n, p in model.state_dict().items()]


@pytest.mark.parametrize("family, spec_name", CASES)
def test_safetensors_round_trip_gives_identical_outputs(family, spec_name, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from layerwise.runs.training import save_model

    model, spec = _build(family, spec_name)
    # a few training steps so batch-norm statistics differ from their initial values
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        model(_inputs(spec, 8)).square().mean().backward()
        opt.step()
    model.eval()
    cfg = layerwise.load_config({"model": model.config.model_dump()})
    path = tmp_path / "model.safetensors"
    save_model(path, model, cfg, spec)

    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    assert meta["family"] == family
    # the metadata alone rebuilds the model
    config = FAMILIES.get(meta["family"]).Config.model_validate(json.loads(meta["model_config"]))
    loaded = build_model(config, DataSpec.from_dict(json.loads(meta["spec"])))
    loaded.load_state_dict(load_file(path))
    loaded.eval()
    x = _inputs(spec)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("family, spec_name", CASES)
def test_reset_head(family, spec_name):
    model, spec = _build(family, spec_name)
    model.reset_head(7)
    model.eval()
    assert model(_inputs(spec)).shape == (4, 7)


def test_family_refuses_other_input_kinds():
    with pytest.raises(ModelError, match="'resnet' does not accept tabular inputs; families that do: ft_transformer, mlp, resmlp, tabm"):
        build_model(FAMILIES.get("resnet").Config(), SPECS["tabular"])


def test_describe_family_lists_hyperparameters():
    info = describe_family("cnn")
    assert info["accepts"] == ["image"]
    assert info["params"]["channels"]["default"] == [32, 64]
    assert "family" not in info["params"]
    assert describe_family("python")["params"]["target"]["required"] is True


# -- the python family: a user's own module ----------------------------------------------------

USER_MODULE = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, hidden, num_classes, input_shape):
        super().__init__()
        self.hidden = hidden
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)
'''


def test_python_family_from_a_file(tmp_path):
    (tmp_path / "user_net.py").write_text(USER_MODULE)
    cfg = {"name": "user", "data": {"name": "iris"},
           "model": {"family": "python", "target": f"{tmp_path / 'user_net.py'}:TinyNet", "args": {"hidden": 12}},
           "train": quick_train(epochs=3, lr=0.01)}
    run = layerwise.train(cfg, runs_dir=tmp_path / "runs", quiet=True)
    module = run.model.module
    assert type(module).__name__ == "TinyNet"
    assert module.hidden == 12  # from args
    assert module.net[-1].out_features == 3  # num_classes filled from the data
    # a fresh process-free reload rebuilds the user's class from the saved config
    loaded = layerwise.load_run(run.path)
    from sklearn.datasets import load_iris

    x = load_iris().data[:10]
    assert (loaded.predict(x)["proba"] == run.predict(x)["proba"]).all()


def test_python_family_bad_args(tmp_path):
    (tmp_path / "user_net.py").write_text(USER_MODULE)
    cfg = {"data": {"name": "iris"}, "model": {"family": "python", "target": f"{tmp_path / 'user_net.py'}:TinyNet",
                                                "args": {"hiddden": 12}}}
    with pytest.raises(ModelError, match=r"model.args: TinyNet\(.*\) failed"):
        layerwise.train(cfg, runs_dir=tmp_path / "runs", quiet=True)
    cfg["model"]["target"] = f"{tmp_path / 'user_net.py'}:Missing"
    with pytest.raises(ModelError, match="has no attribute 'Missing'"):
        layerwise.train(cfg, runs_dir=tmp_path / "runs", quiet=True)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


class InstanceNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x)


def test_python_family_module_instance(tmp_path):
    net = InstanceNet()
    cfg = {"data": {"name": "iris"}, "train": quick_train(epochs=2, lr=0.05)}
    before = net.linear.weight.detach().clone()
    run = layerwise.train(cfg, model=net, runs_dir=tmp_path, quiet=True)
    assert run.config.model.family == "python"
    assert run.config.model.target.endswith(":InstanceNet")
    assert run.model.module is net
    assert not torch.equal(net.linear.weight.detach(), before)  # the instance itself was trained
    # loading the run into a new instance of the user's class restores the same weights
    reloaded = layerwise.load_run(run.path).load_model(InstanceNet())
    assert torch.equal(reloaded.module.linear.weight, net.linear.weight.detach())


class WrongOutputNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 5)

    def forward(self, x):
        return self.linear(x)


def test_module_instance_with_wrong_output_shape(tmp_path):
    with pytest.raises(ModelError, match=r"WrongOutputNet returns \(2, 5\) for a batch of 2; expected \(batch, 3\)"):
        layerwise.train({"data": {"name": "iris"}}, model=WrongOutputNet(), runs_dir=tmp_path, quiet=True)
    assert not any(tmp_path.iterdir())


def test_module_instance_with_wrong_input_shape(tmp_path):
    with pytest.raises(ModelError, match=r"InstanceNet fails on inputs of shape \(batch, 30\)"):
        layerwise.train({"data": {"name": "breast_cancer"}}, model=InstanceNet(), runs_dir=tmp_path, quiet=True)


# -- the CLI ---------------------------------------------------------------------------------


def test_cli_models_lists_families(run_cli):
    code, out, err = run_cli("models")
    assert code == 0, err
    for name in FAMILIES.names():
        assert name in out
    assert "channels" in out and "hidden" in out  # hyperparameters
    assert "image" in out and "tabular" in out  # accepted inputs


def test_cli_models_show_counts_parameters(run_cli, tmp_path):
    cfg = {"data": {"name": "digits"}, "model": {"family": "cnn", "channels": [4, 8], "dropout": 0.0}}
    write_yaml(tmp_path / "cnn.yaml", cfg)
    code, out, err = run_cli("models", "show", "cnn.yaml", "--set", "model.channels=[4, 6]")
    assert code == 0, err
    spec = DataSpec(kind="image", input_shape=(1, 8, 8), target="class", num_classes=10)
    expected = sum(p.numel() for p in build_model(FAMILIES.get("cnn").Config(channels=[4, 6], dropout=0.0),
                                                  spec).parameters())
    assert "(1, 8, 8)" in out
    assert "total" in out and f"{expected:,}" in out
    assert "Conv2d" in out and "Linear" in out
