"""Config validation: unknown keys with suggestions, key paths in type errors, overrides, round trip."""

from __future__ import annotations

import pytest
from helpers import config_error as _error
from helpers import REPO, write_yaml

from layerwise import ConfigError, ExperimentConfig, load_config
from layerwise.core.config import apply_overrides, parse_override

IRIS = {"data": {"source": "builtin", "name": "iris"}, "model": {"family": "mlp"}}


# -- unknown keys and names ------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, path, suggestion",
    [
        ({"train": {"epoch": 3}}, "train.epoch", "epochs"),
        ({"model": {"family": "cnn", "chanels": [8]}}, "model.chanels", "channels"),
        ({"model": {"family": "mlp", "hiden": [8]}}, "model.hiden", "hidden"),
        ({"model": {"family": "resnet", "widht": 8}}, "model.widht", "width"),
        ({"data": {"source": "builtin", "nmae": "iris"}}, "data.nmae", "name"),
        ({"data": {"augment": {"shfit": 0.1}}}, "data.augment.shfit", "shift"),
        ({"train": {"early_stopping": {"patiense": 3}}}, "train.early_stopping.patiense", "patience"),
        ({"train": {"scheduler": {"name": "step", "step_sise": 2}}}, "train.scheduler.step_sise", "step_size"),
        ({"evaluate": {"splt": "val"}}, "evaluate.splt", "split"),
        ({"trian": {"epochs": 1}}, "trian", "train"),
    ],
)
def test_unknown_key_names_path_and_suggests(raw, path, suggestion):
    message = _error(raw)
    assert message.startswith(f"{path}:")
    assert f"did you mean '{suggestion}'" in message


def test_unknown_key_without_close_match_lists_valid_keys():
    message = _error({"train": {"zzzzzz": 1}})
    assert message.startswith("train.zzzzzz: unknown key")
    assert "did you mean" not in message
    assert "epochs" in message and "batch_size" in message


@pytest.mark.parametrize(
    "raw, key, bad, suggestion",
    [
        ({"model": {"family": "cnnn"}}, "model.family", "cnnn", "cnn"),
        ({"model": {"family": "resnett"}}, "model.family", "resnett", "resnet"),
        ({"train": {"optimizer": "adamw_"}}, "train.optimizer", "adamw_", "adamw"),
        ({"train": {"optimizer": "sgdd"}}, "train.optimizer", "sgdd", "sgd"),
        ({"train": {"scheduler": "cosin"}}, "train.scheduler.name", "cosin", "cosine"),
        ({"train": {"scheduler": {"name": "onecylce"}}}, "train.scheduler.name", "onecylce", "onecycle"),
        ({"data": {"source": "csvv", "path": "x.csv", "target": "y"}}, "data.source", "csvv", "csv"),
        ({"data": {"source": "image_foldr", "path": "x"}}, "data.source", "image_foldr", "image_folder"),
        ({"task": "clasification"}, "task", "clasification", "classification"),
    ],
)
def test_unknown_registry_name_suggests_closest(raw, key, bad, suggestion):
    message = _error(raw)
    assert message.startswith(f"{key}:")
    assert f"'{bad}'" in message
    assert f"did you mean '{suggestion}'" in message
    assert "choose one of:" in message


@pytest.mark.parametrize(
    "raw, path, received",
    [
        ({"train": {"epochs": "three"}}, "train.epochs", "'three'"),
        ({"train": {"lr": "fast"}}, "train.lr", "'fast'"),
        ({"train": {"batch_size": 0}}, "train.batch_size", "0"),
        ({"model": {"family": "mlp", "hidden": "big"}}, "model.hidden", "'big'"),
        ({"model": {"family": "cnn", "channels": [8, "x"]}}, "model.channels.1", "'x'"),
        ({"data": {"val_fraction": 1.5}}, "data.val_fraction", "1.5"),
        ({"data": {"augment": {"rotation": 500}}}, "data.augment.rotation", "500"),
        ({"train": {"early_stopping": {"patience": -1}}}, "train.early_stopping.patience", "-1"),
        ({"name": "has spaces"}, "name", "'has spaces'"),
    ],
)
def test_wrong_type_names_key_path_and_received_value(raw, path, received):
    message = _error(raw)
    assert message.startswith(f"{path}:")
    assert f"received {received}" in message


@pytest.mark.parametrize(
    "raw, path, bad, suggestion",
    [
        ({"evaluate": {"split": "tset"}}, "evaluate.split", "tset", "test"),
        ({"train": {"precision": "bf61"}}, "train.precision", "bf61", "bf16"),
        ({"data": {"sampler": "weigthed"}}, "data.sampler", "weigthed", "weighted"),
        ({"model": {"family": "mlp", "activation": "gelu_"}}, "model.activation", "gelu_", "gelu"),
    ],
)
def test_unknown_choice_suggests_closest(raw, path, bad, suggestion):
    message = _error(raw)
    assert message.startswith(f"{path}: ")
    assert f"'{bad}'" in message
    assert f"did you mean '{suggestion}'" in message
    assert "choose one of:" in message


def test_missing_required_key_is_named():
    message = _error({"data": {"source": "csv", "target": "y"}})
    assert message.startswith("data.path: required key is missing")


def test_section_that_is_not_a_mapping(tmp_path):
    assert _error({"train": 5}).startswith("train: expected a mapping")
    message = _error(write_yaml(tmp_path / "list.yaml", "- a\n- b\n"))
    assert message.startswith(f"{tmp_path / 'list.yaml'}: expected a mapping") and "received list" in message
    assert "received int 5" in _error(write_yaml(tmp_path / "scalar.yaml", "5\n"))


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError):
        load_config({"train": {"epoch": 1}})


# -- files -----------------------------------------------------------------------------------


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = write_yaml(tmp_path / "bad.yaml", "train:\n  epochs: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: .* at line \d+, column \d+"):
        load_config(bad)


@pytest.mark.parametrize("text", ["", "\n  \n", "# only a comment\n", "null\n", "~\n", "---\n"])
def test_empty_yaml_is_an_error_naming_the_file(tmp_path, text):
    # an empty file is a wrong path or an unsaved editor, not a request for the default CNN
    path = write_yaml(tmp_path / "empty.yaml", text)
    message = _error(path)
    assert message.startswith(f"{path} is empty:")
    assert "without CONFIG" in message


def test_none_is_the_embedded_default():
    cfg = load_config(None)
    assert cfg.name == "digits-cnn"
    assert cfg.train.scheduler.name == "onecycle"


# -- inputs the fuzz test (test_config_fuzz.py) found escaping as tracebacks or broken messages ------


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("name: 2020-13-45\n", "cannot read '2020-13-45' as a timestamp (month must be in 1..12) at line 1, column 7"),
        ("train: {epochs: !!int abc}\n", "cannot read 'abc' as an int"),
        ("name: !!timestamp foo\n", "cannot read 'foo' as a timestamp at line 1"),
        ("name: !!bool maybe\n", "cannot read 'maybe' as a bool"),
        ("train: {epochs: " + "1" * 5000 + "}\n", "(Exceeds the limit (4300 digits) for integer string conversion)"),
    ],
)
def test_a_value_pyyaml_cannot_build_is_a_config_error(tmp_path, text, fragment):
    # PyYAML let ValueError, AttributeError or KeyError escape for these
    path = write_yaml(tmp_path / "bad.yaml", text)
    message = _error(path)
    assert message.startswith(f"{path}: ") and fragment in message
    assert message.endswith("quote it to keep it text")


def test_a_value_pyyaml_cannot_build_in_an_override_is_text():
    assert parse_override("name=2020-13-45") == ("name", "2020-13-45")
    assert load_config(IRIS, ["name=2020-13-45"]).name == "2020-13-45"


def test_nesting_past_the_stack_is_a_config_error(tmp_path):
    # a RecursionError escaped: PyYAML's parser and copy.deepcopy recurse once per level
    deep = write_yaml(tmp_path / "deep.yaml", "train: " + "[" * 2000 + "]" * 2000 + "\n")
    assert "nested hundreds of levels deep" in _error(deep)
    value: list = []
    for _ in range(5000):
        value = [value]
    assert _error({"model": {"family": "mlp", "hidden": value}}).startswith("model.hidden.0.0...: nested more than")
    assert "nested more than" in _error({**IRIS, "train": {"epochs": value[0]}})
    with pytest.raises(ConfigError, match="^model.hidden.0.0...: nested more than"):
        load_config(IRIS, ["model.hidden=" + "[" * 100 + "]" * 100])
    with pytest.raises(ConfigError, match="^model.hidden: Input should be a valid list"):
        load_config(IRIS, ["model.hidden=" + "[" * 2000 + "]" * 2000])  # past PyYAML's stack: the text itself


def test_an_alias_inside_its_own_anchor_is_a_config_error(tmp_path):
    # the python family's free-form args accepted it, and saving the run's config.yaml then failed
    path = write_yaml(tmp_path / "loop.yaml", "model: {family: python, target: net.py:Net, args: &a {x: *a}}\n")
    assert _error(path) == "model.args.x: holds itself (a YAML alias inside its own anchor); write the value out"


def test_line_breaks_in_keys_and_names_stay_on_one_line():
    assert _error({"train": {"a\nb": 1}}).startswith("train.'a\\nb': unknown key")
    assert _error({"a\nb": 1}).startswith("'a\\nb': unknown section")
    assert _error({"model": {"family": "cn\nn"}}).startswith("model.family: unknown model family 'cn\\nn'")
    assert _error({"task": "x\ny"}).startswith("task: unknown task 'x\\ny'")
    with pytest.raises(ConfigError, match=r"^--set 'train.epochs.a\\nb': 'train.epochs' is a value"):
        load_config(IRIS, ["train.epochs=1", "train.epochs.a\nb=1"])


def test_long_values_are_cut_in_messages():
    # the whole value was quoted: a message of 5,000 characters for a long --set value
    assert len(_error({"data": {"source": 10**400}})) < 120
    assert len(_error({"data": {"source": "x" * 5000}})) < 400
    assert len(_error(IRIS | {"data": {"name": "iris", "sampler": "1" * 5000}})) < 200
    assert len(_error({"train": {"x" * 5000: 1}})) < 400
    with pytest.raises(ConfigError, match="expected KEY=VALUE") as info:
        load_config(IRIS, ["x" * 5000])
    assert len(str(info.value)) < 200


def test_a_source_that_is_not_a_mapping_or_a_path(tmp_path):
    # load_config(["a"]) raised TypeError in pathlib; a top-level list with overrides, ValueError in dict()
    assert _error(["train"]).startswith("config: expected a mapping of sections, a YAML file's path")
    listed = write_yaml(tmp_path / "list.yaml", "- abc\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: expected a mapping of sections"):
        load_config(listed, ["train.epochs=1"])


def test_unreadable_config_paths(tmp_path):
    # a name too long for the file system raised OSError
    message = _error(str(tmp_path / ("x" * 5000)))
    assert message.endswith("cannot read the config file (File name too long)") and len(message) < 300
    assert _error("a\nb.yaml").startswith("config file not found: 'a\\nb.yaml'")


def test_deprecation_warning_of_a_string_with_a_line_break_is_one_line():
    with pytest.warns(DeprecationWarning) as caught, pytest.raises(ConfigError):
        load_config({**IRIS, "train": {"class_weight": "a\nb"}})
    assert [str(w.message) for w in caught] == [
        'train.class_weight is deprecated; write it as task: {name: classification, class_weight: "a\\nb"}']


def test_a_run_name_must_fit_a_folder_name():
    # accepted, then creating runs/NAME-TIMESTAMP failed with OSError (File name too long)
    assert load_config({**IRIS, "name": "a" * 200}).name == "a" * 200
    assert _error({**IRIS, "name": "a" * 201}).startswith("name: String should have at most 200 characters")


def test_registry_lookup_of_a_value_that_is_not_a_name():
    from layerwise import FAMILIES

    with pytest.raises(ConfigError, match=r"^model.family: expected the name of a model family; received list"):
        FAMILIES.get(["cnn"])
    assert ["cnn"] not in FAMILIES


# -- overrides -------------------------------------------------------------------------------


def test_dotted_overrides():
    cfg = load_config(IRIS, ["train.epochs=3", "train.lr=0.5", "model.hidden=[8, 4]", "data.augment.shift=0.1",
                             "train.scheduler=cosine", "train.scheduler.min_lr=0.001", "name=my-run"])
    assert cfg.train.epochs == 3
    assert cfg.train.lr == 0.5
    assert cfg.model.hidden == [8, 4]
    assert cfg.data.augment.shift == 0.1  # a nested section created by the override
    assert cfg.train.scheduler.name == "cosine" and cfg.train.scheduler.min_lr == 0.001
    assert cfg.name == "my-run"


def test_overrides_as_mapping_and_double_underscores():
    cfg = load_config(IRIS, {"train__epochs": 4, "train.early_stopping": True})
    assert cfg.train.epochs == 4
    assert cfg.train.early_stopping is not None and cfg.train.early_stopping.monitor == "val_loss"


def test_overrides_inside_shorthand_sections():
    cfg = load_config({**IRIS, "train": {"early_stopping": True, "scheduler": "plateau"}},
                      ["train.early_stopping.patience=2", "train.scheduler.factor=0.5"])
    assert cfg.train.early_stopping.patience == 2 and cfg.train.early_stopping.monitor == "val_loss"
    assert cfg.train.scheduler.name == "plateau" and cfg.train.scheduler.factor == 0.5


def test_shorthand_values():
    cfg = load_config({"train": {"scheduler": None, "early_stopping": False}})
    assert cfg.train.scheduler.name == "none" and cfg.train.early_stopping is None


def test_override_of_family_switches_the_model_schema():
    cfg = load_config({"model": {"family": "cnn"}}, ["model.family=resnet"])
    assert cfg.model.family == "resnet"
    assert hasattr(cfg.model, "blocks")


def test_bad_overrides():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("train.epochs")
    with pytest.raises(ConfigError, match="'train.epochs' is a value, not a section"):
        apply_overrides({"train": {"epochs": 3}}, {"train.epochs.x": 1})
    with pytest.raises(ConfigError, match=r"^train\.epohcs: unknown key \(did you mean 'epochs'\?\)"):
        load_config(IRIS, ["train.epohcs=2"])


def test_parse_override_parses_yaml_values():
    assert parse_override("train.epochs=3") == ("train.epochs", 3)
    assert parse_override("train.nesterov=true") == ("train.nesterov", True)
    assert parse_override("model.hidden=[1, 2]") == ("model.hidden", [1, 2])
    assert parse_override("name=abc") == ("name", "abc")
    assert parse_override("train.max_steps=") == ("train.max_steps", None)


# -- round trip and reference ----------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        None,
        IRIS,
        {"data": {"source": "csv", "path": "x.csv", "target": ["a", "b"], "categorical_encoding": "embedding"},
         "model": {"family": "mlp", "hidden": [4]}, "task": "regression"},
        {"data": {"augment": {"shift": 0.1, "flip": True}}, "model": {"family": "resnet", "blocks": [1, 1]},
         "train": {"scheduler": {"name": "plateau", "patience": 1}, "early_stopping": True, "class_weight": [1, 2]}},
        {"model": {"family": "python", "target": "net.py:Net", "args": {"hidden": 4}}},
    ],
)
def test_round_trip(raw):
    cfg = load_config(raw)
    again = load_config(cfg.to_dict())
    assert again == cfg
    assert again.to_yaml() == cfg.to_yaml()
    assert load_config(cfg) == cfg
    assert isinstance(again, ExperimentConfig)


def test_round_trip_through_a_yaml_file(tmp_path):
    cfg = load_config(IRIS, ["train.scheduler=warmup_cosine", "train.epochs=7"])
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


def test_validate_assignment():
    cfg = load_config(IRIS)
    with pytest.raises(ValueError):
        cfg.train.epochs = 0


def test_docs_reference_is_generated_from_the_schemas():
    from layerwise.runs.reference import config_reference

    doc = REPO / "docs" / "configuration.md"
    if not doc.is_file():
        pytest.skip("docs/configuration.md does not exist yet; generate it with `layerwise config --reference`")
    assert doc.read_text(encoding="utf-8") == config_reference(), (
        "docs/configuration.md is out of date; regenerate it with `layerwise config --reference > docs/configuration.md`"
    )


def test_reference_covers_every_registered_name():
    from layerwise import FAMILIES, SOURCES
    from layerwise.runs.reference import config_reference
    from layerwise.train import OPTIMIZERS, SCHEDULERS

    text = config_reference()
    for name in [*FAMILIES.names(), *SOURCES.names()]:
        assert f": {name} " in text, name
    for name in [*OPTIMIZERS.names(), *SCHEDULERS.names()]:
        assert name in text
    for key in ("epochs", "checkpoint_every", "auc_thresholds", "categorical_encoding", "channels"):
        assert f"`{key}`" in text
