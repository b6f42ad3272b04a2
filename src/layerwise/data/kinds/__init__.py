"""Input kinds: what one sample of a run's inputs is, and everything that depends on it.

``DataSpec.kind`` names one of these: ``tabular``, ``image``, ``sequence``, ``tokens``, ``video``.
Each kind is one file of this package, a subclass of :class:`InputKind` registered with
:func:`register_kind`. The kind owns what code elsewhere would otherwise decide with
``if spec.kind == ...``: the dtype of the model input, the preprocessing fitted on a source's raw
inputs, reading new inputs for ``Run.predict`` / ``evaluate --data``, showing samples in a report,
the request schema of ``layerwise serve``, and the capability questions the higher layers ask
(can gradients flow into the inputs? are they pixels? one picture? table columns?).

The higher layers never name a kind: they ask ``input_kind(run.spec)`` and use its answers. So a
new kind (a graph, an environment's observations) is one new file here plus the source that reads
it; the layers above pick it up through the capabilities it declares.

>>> from layerwise.data.kinds import input_kind
>>> input_kind("tokens").dtype
torch.int64
>>> input_kind("image").picture, input_kind("tabular").columns
(True, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from ...core.errors import DataError, RunError
from ...core.registry import Registry, import_submodules
from ..spec import INPUT_DTYPES
from ._inputs import Inputs
from ._serving import InputError, RequestSchema

if TYPE_CHECKING:
    from ..spec import DataSpec, RawData

__all__ = ["KINDS", "InputKind", "Fitted", "Inputs", "InputError", "RequestSchema", "register_kind", "input_kind"]

KINDS: Registry[type["InputKind"]] = Registry("input kind", key="data kind")


@dataclass
class Fitted:
    """Preprocessing fitted on a source's training rows, and what the spec says about the inputs."""

    preprocessor: Any  # has batch(x, train, seed), to_dict() / from_dict(): saved with the run
    input_shape: tuple[int, ...]  # one sample as stored, without the batch dimension
    spec: dict[str, Any] = field(default_factory=dict)  # further DataSpec fields: feature_names, categorical...


class InputKind:
    """The contract of an input kind. Subclasses override what differs from these defaults.

    Attributes are capability answers, read by the layers above instead of comparing kind names;
    each default is the answer of plain float features. Methods are the kind's own work.
    """

    # -- what it is ---------------------------------------------------------------------------
    name: ClassVar[str] = ""  # the DataSpec.kind it answers for; set by register_kind
    # one line for listings and messages: the shape and dtype of one sample
    description: ClassVar[str] = ""
    # the RawData.kind a source hands over for it, when not its own name (text sources give
    # "text", the pipeline makes "tokens" of it)
    raw_kind: ClassVar[str | None] = None
    dtype: ClassVar[torch.dtype] = torch.float32  # of a model input batch (what example_input gives)

    # -- capabilities ----------------------------------------------------------------------------
    # float inputs that gradients can flow into: attacks, adversarial training and gradient
    # explanations work on the input itself (False: integer ids, embedded inside the model)
    continuous: ClassVar[bool] = True
    # stored as uint8 pixels (C, H, W), per frame, normalised batch by batch on the device:
    # augmentation applies, and attacks perturb pixels in [0, 1]
    pixels: ClassVar[bool] = False
    # one (C, H, W) picture per sample: convolutional variants, image grids and pictures in reports
    picture: ClassVar[bool] = False
    # the named columns of a table: read from and written back to DataFrames and CSV files
    columns: ClassVar[bool] = False
    # the space explanations attribute over: "pixels" (patches of a picture), "columns" (one
    # feature per column) or "positions" (one feature per step or token); None: not explained yet
    explained_as: ClassVar[str | None] = None

    # -- preprocessing (data.pipeline.build_bundle) ---------------------------------------------
    def fit(self, x: Any, train_idx: np.ndarray, cfg: Any, origin: str) -> Fitted:
        """Fit the preprocessing on the training rows ``train_idx`` of a source's raw inputs ``x``.

        Default: none; a kind whose sources build their bundle themselves (a time series cut into
        windows) leaves it, and the shared pipeline refuses its raw data."""
        raise DataError(f"{origin}: unsupported input kind '{self.name}'")

    def encode(self, preprocessor: Any, x: Any) -> torch.Tensor:
        """Raw inputs (some rows of what the source read) to their stored form. Default: an array as is."""
        return torch.as_tensor(np.ascontiguousarray(x))

    def take(self, x: Any, idx: np.ndarray) -> Any:
        """Rows ``idx`` of a source's raw inputs. Default: array indexing."""
        return x[idx]

    def concat(self, parts: list[Any]) -> Any:
        """Raw inputs of several parts as one, in order. Default: arrays concatenated."""
        return np.concatenate(parts)

    # -- new inputs (data.inputs.read_inputs) ----------------------------------------------------
    def read_inputs(self, source: Any, run: Any, need_labels: bool = False) -> Inputs:
        """New inputs for a trained run from a path, an array, a DataFrame...; labels when they carry them.

        Default: refused, naming the kind (a kind reads nothing until it says how)."""
        raise DataError(f"{run.path}: Run.predict and evaluate --data read no {self.name} inputs yet; "
                        f"evaluate the run's own splits")

    # -- serving (tools.serve) ---------------------------------------------------------------------
    def request_schema(self, run: Any) -> RequestSchema:
        """What ``POST /predict`` accepts for ``run``; raises RunError for runs that cannot be served.

        Default: not servable."""
        raise RunError(f"{run.path}: {self.name} runs cannot be served (Run.predict reads no {self.name} "
                       f"inputs yet); serve an image, tabular or text classification run")

    # -- display ---------------------------------------------------------------------------------
    def position_labels(self, preprocessor: Any, sample: torch.Tensor) -> tuple[list[str], list[int]]:
        """Axis labels of one sample's positions, and the positions worth showing (attention maps).

        Default: time steps ``t0, t1...``, all shown."""
        steps = sample.shape[0]
        return [f"t{t}" for t in range(steps)], list(range(steps))

    def samples_html(self, stored: list[Any], titles: list[str], alt: str, color: str | None = None) -> str | None:
        """Stored samples (one title each) as report HTML, made with ``core.sections`` helpers.

        Default: None, the kind has no picture of a sample; the report leaves the part out."""
        return None


def register_kind(name: str):
    """Class decorator adding an :class:`InputKind` under ``name`` (the ``DataSpec.kind`` it answers for).

    >>> @register_kind("graph")                      # doctest: +SKIP
    ... class GraphKind(InputKind):
    ...     description = "(N, F) node features and an edge list"
    """

    def add(cls: type[InputKind]) -> type[InputKind]:
        cls.name = name
        INPUT_DTYPES[name] = cls.dtype  # DataSpec.example_input sits below the kinds: it is told
        return KINDS.register(name)(cls)

    return add


def input_kind(of: "str | DataSpec | RawData") -> InputKind:
    """The kind of a spec, a source's raw data or a kind name (a raw kind such as ``text`` too).

    An unknown name raises ConfigError naming the registered kinds."""
    name = of if isinstance(of, str) else of.kind
    if name not in KINDS:  # a raw kind: the kind that declares it
        for known, cls in KINDS.items():
            if cls.raw_kind == name:
                name = known
                break
    return KINDS.get(name)()


# each file registers its kind: adding a file adds a kind
import_submodules(__name__)
