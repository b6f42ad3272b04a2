"""Input kinds (layerwise.data.kinds): every registered kind answers the contract, and a new kind is one file."""

from __future__ import annotations

import importlib
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from layerwise.core.errors import ConfigError, DataError, RunError
from layerwise.data.kinds import KINDS, InputKind, RequestSchema, input_kind
from layerwise.data.spec import INPUT_DTYPES, DataSpec, RawData

BUILTIN = ("image", "sequence", "tabular", "tokens", "video")
SPACES = (None, "pixels", "columns", "positions")  # what tools.explain knows how to explain


def test_the_builtin_kinds_are_registered():
    assert set(BUILTIN) <= set(KINDS.names())


@pytest.mark.parametrize("name", KINDS.names())
def test_every_kind_answers_the_contract(name):
    kind = input_kind(name)
    assert isinstance(kind, InputKind) and kind.name == name
    assert kind.description, f"{name}: say what one sample is (shape, dtype)"
    # the example input a model is dry-run with has the kind's dtype, and the spec's shape
    spec = DataSpec(kind=name, input_shape=(3, 4, 4), target="class", num_classes=2)
    example = spec.example_input(2)
    assert example.dtype == kind.dtype and example.shape == (2, 3, 4, 4)
    assert input_kind(spec).name == name
    # the capability answers agree with each other
    assert kind.continuous == kind.dtype.is_floating_point
    assert not kind.picture or kind.pixels, "a picture is stored as pixels"
    assert not kind.columns or kind.continuous
    assert kind.explained_as in SPACES
    # a source's raw data of this kind finds it (text sources hand over "text" for tokens)
    assert input_kind(RawData(kind.raw_kind or name, None, np.zeros(0))).name == name
    # the default position labels are time steps; a kind may label its own (tokens decode them)
    if kind.continuous:
        labels, keep = kind.position_labels(None, torch.zeros(5, 2))
        assert len(labels) == 5 and keep == list(range(5))


@pytest.mark.parametrize("name", KINDS.names())
def test_every_kind_shows_samples_or_says_it_has_no_picture(name):
    kind = input_kind(name)
    stored = [torch.randint(0, 255, (1, 6, 6), dtype=torch.uint8) for _ in range(3)]
    html = kind.samples_html(stored, ["a", "b", "c"], "samples")
    if kind.picture:
        assert html is not None and html.startswith("<img")
    else:  # the report leaves the part out
        assert html is None


def test_an_unknown_kind_names_the_registered_ones():
    with pytest.raises(ConfigError, match="did you mean 'image'") as err:
        input_kind("imgae")
    assert all(name in str(err.value) for name in BUILTIN)


def test_a_kind_without_a_reader_or_schema_refuses_with_its_name():
    run = SimpleNamespace(path="runs/v", spec=DataSpec(kind="video", input_shape=(2, 1, 4, 4), target="class"))
    with pytest.raises(DataError, match="read no video inputs"):
        input_kind("video").read_inputs("clip.npz", run)
    with pytest.raises(RunError, match="video runs cannot be served"):
        input_kind("video").request_schema(run)


GRAPH_KIND = '''
    """``graph_demo``: a small graph per sample, stored as (N, F) float32 node features."""

    import numpy as np
    import torch

    from layerwise.data.kinds import Fitted, InputKind, register_kind


    class Identity:  # nothing learnt: the stored features are what the model reads
        def batch(self, x, train=False, seed=None):
            return x


    @register_kind("graph_demo")
    class GraphKind(InputKind):
        description = "(N, F) float32 node features"
        explained_as = "positions"  # one feature group per node

        def fit(self, x, train_idx, cfg, origin):
            return Fitted(Identity(), tuple(x.shape[1:]))

        def encode(self, preprocessor, x):
            return torch.as_tensor(np.asarray(x, dtype=np.float32))
'''


@pytest.fixture
def graph_kind(tmp_path, monkeypatch):
    """The kind above, written as its own file and imported the way a plugin module would be."""
    (tmp_path / "graph_demo_kind.py").write_text(textwrap.dedent(GRAPH_KIND))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("graph_demo_kind")
    yield module
    KINDS._entries.pop("graph_demo", None)  # leave the registry as the other tests know it
    INPUT_DTYPES.pop("graph_demo", None)


def test_a_new_kind_is_one_small_file(graph_kind):
    from layerwise.core.config import DataConfig
    from layerwise.data.pipeline import build_bundle

    assert "graph_demo" in KINDS.names()
    kind = input_kind("graph_demo")
    assert isinstance(kind, graph_kind.GraphKind) and kind.continuous and not kind.pixels
    # the shared pipeline splits and preprocesses its raw data through the kind, into a spec of its kind
    rng = np.random.default_rng(0)
    raw = RawData("graph_demo", rng.normal(size=(60, 5, 3)), rng.integers(0, 2, 60), origin="graphs")
    bundle = build_bundle(raw, DataConfig(), "classification")
    assert bundle.spec.kind == "graph_demo" and bundle.spec.input_shape == (5, 3)
    assert bundle.train.x.dtype == torch.float32 and bundle.spec.example_input(2).shape == (2, 5, 3)
    # what it does not implement is refused with its name, not mistaken for another kind
    run = SimpleNamespace(path="runs/g", spec=bundle.spec)
    with pytest.raises(DataError, match="graph_demo"):
        kind.read_inputs("graphs.npz", run)
    with pytest.raises(RunError, match="graph_demo runs cannot be served"):
        kind.request_schema(run)
    assert kind.samples_html([], [], "none") is None


def test_request_schemas_describe_the_rows_they_take():
    from layerwise.data.preprocess import ImagePreprocessor

    image = input_kind("image").request_schema(SimpleNamespace(preprocessing=SimpleNamespace(
        inputs=ImagePreprocessor(1, (2, 3)))))
    assert isinstance(image, RequestSchema) and image.takes_image_files
    assert image.describe()["shape"] == [2, 3]
    image.check_row(0, image.example()[0])
    assert image.to_source(image.example()).shape == (1, 1, 2, 3)
