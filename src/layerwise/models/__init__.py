"""Model families, the contract they obey, and the registry that builds them.

A family is one file with one class decorated by ``@register_family("name")``. The class declares
the input kinds it accepts and a pydantic ``Config`` of its hyperparameters; its constructor takes
``(config, spec)``. Every family splits ``forward`` into ``forward_features`` and ``forward_head``,
so explanation, compression, export and fine-tuning work on any model without per-family branches.

Ensembles (TabM's k members sharing weights): a family whose model is k members sets ``members = k``
and, **in training mode only**, returns (B, k, outputs), one row of outputs per member.
``Task.training_step`` trains each member on its own loss: the loss of the flattened (B * k) outputs
against the labels repeated k times, with the count divided by k so the logged loss stays a mean per
sample; its training metrics read the combined prediction. In eval mode (evaluate, predict, export,
serve, explain, attacks: every inference path) the model returns (B, outputs), the members combined
by :func:`combine_members`: for class targets the log of the mean member probability (so softmax
and argmax downstream are right), for numeric targets the mean.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from ..core.config import ModelConfig
from ..core.errors import ModelError
from ..core.registry import Registry, import_submodules
from ..data.spec import DataSpec

__all__ = ["FAMILIES", "LayerwiseModel", "register_family", "build_model", "wrap_module", "describe_family",
           "combine_members"]

FAMILIES: Registry[type["LayerwiseModel"]] = Registry("model family", key="model.family")


class LayerwiseModel(nn.Module):
    """The model contract: ``forward(x) == forward_head(forward_features(x))``.

    Subclasses set ``accepts`` (input kinds) and ``Config``, build ``self.head`` as the last layer
    mapping ``num_features`` to ``spec.num_outputs``, and implement ``forward_features``.
    """

    family: ClassVar[str] = ""
    accepts: ClassVar[frozenset[str]] = frozenset()
    Config: ClassVar[type[ModelConfig]] = ModelConfig
    members: int = 1  # k > 1: an ensemble, whose training-mode forward returns (B, k, outputs) (see above)

    def __init__(self, config: ModelConfig, spec: DataSpec):
        super().__init__()
        self.config = config
        self.spec = spec

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @property
    def num_features(self) -> int:
        return self.head.in_features

    def output_layers(self) -> list[nn.Module]:
        """The layers that produce the outputs (structured pruning leaves their widths alone)."""
        return [self.head]

    def reset_head(self, num_outputs: int) -> None:
        """Replace the output layer (fine-tuning on a new label set)."""
        self.head = nn.Linear(self.num_features, num_outputs).to(next(self.parameters()).device)

    @classmethod
    def user_code(cls, config: ModelConfig) -> str | None:
        """The code outside installed packages that building ``config`` would import and run, and
        that this process has not run already (None: there is none, as for every built-in family).

        Loading a run directory refuses to build a model that names such code unless the user
        trusts the run (``layerwise.runs.trust``); the ``python`` family is the one that does."""
        return None


def combine_members(outputs: torch.Tensor, target: str) -> torch.Tensor:
    """(B, k, outputs) of k ensemble members -> (B, outputs): the log of the mean member probability
    for ``class`` (and ``token``) targets, the mean for ``numeric`` ones.

    >>> logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])     # one sample, two members
    >>> combine_members(logits, "class").softmax(-1)          # the mean of [0.5, 0.5] and [0.88, 0.12]
    tensor([[0.6904, 0.3096]])
    """
    if target == "numeric":
        return outputs.mean(dim=1)
    log_proba = torch.log_softmax(outputs.float(), dim=-1)  # (B, k, C)
    return (torch.logsumexp(log_proba, dim=1) - math.log(outputs.shape[1])).to(outputs.dtype)


def register_family(name: str):
    """Class decorator adding a :class:`LayerwiseModel` family under ``name``."""

    def add(cls):
        cls.family = name
        return FAMILIES.register(name)(cls)

    return add


def is_generative(cls) -> bool:
    """Generative families (autoencoder, vae, gan, diffusion) imply their own task."""
    return bool(getattr(cls, "implies_task", None))


def families_accepting(kind: str, generative: bool = False) -> list[str]:
    """Families that accept ``kind`` inputs: the predictive ones, or with ``generative`` the generative ones."""
    return [name for name, cls in FAMILIES.items() if kind in cls.accepts and is_generative(cls) == generative]


def build_model(config: ModelConfig, spec: DataSpec) -> LayerwiseModel:
    """Build the family a config names, checking it accepts the data and produces the right shape."""
    cls = FAMILIES.get(config.family)
    if cls.accepts and spec.kind not in cls.accepts:
        raise ModelError(
            f"model.family: '{config.family}' does not accept {spec.kind} inputs; families that do: "
            f"{', '.join(families_accepting(spec.kind, is_generative(cls)))}"
        )
    if getattr(config, "bags", 1) > 1:
        if is_generative(cls) or config.family == "python":
            raise ModelError(f"model.bags: a bag averages predictions of classifiers or regressors; the "
                             f"{config.family} family is {'generative' if is_generative(cls) else 'user code'}: "
                             f"remove model.bags")
        from .bagging import Bag

        model = Bag.build(config, spec)
    else:
        model = cls(config, spec)
    if getattr(config, "lora", None) is not None:
        from .lora import add_lora

        add_lora(model, config.lora)  # adapters beside the chosen linear layers (models/lora.py)
    check_output_shape(model, spec, f"model.family '{config.family}'")
    return model


def check_output_shape(model: nn.Module, spec: DataSpec, what: str) -> None:
    """One dry forward pass on zeros: catch a model/data mismatch before training starts."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(spec.example_input(2))
    except SystemExit as exc:
        raise ModelError(f"{what} called sys.exit({exc.code!r}) in its forward pass; a model must return its "
                         f"outputs, or raise an exception") from None
    except Exception as exc:  # a user's module can fail in any way; name it and the input it got
        raise ModelError(
            f"{what} fails on inputs of shape (batch, {', '.join(map(str, spec.input_shape))}): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; make the model accept this input shape"
        ) from None
    finally:
        model.train(was_training)
    expected = (2, spec.num_outputs)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"{what} returns {got} for a batch of 2; expected (batch, {spec.num_outputs}) for this data")


def wrap_module(module: nn.Module, spec: DataSpec, target: str | None = None) -> LayerwiseModel:
    """Bring a user's own ``nn.Module`` under the contract (its whole body counts as features)."""
    from .python import ExternalModel

    if isinstance(module, LayerwiseModel):
        check_output_shape(module, spec, type(module).__name__)
        return module
    if not isinstance(module, nn.Module):
        raise ModelError(f"model: expected a torch.nn.Module; received {type(module).__name__}")
    wrapped = ExternalModel.around(module, spec, target)
    check_output_shape(wrapped, spec, type(module).__name__)
    return wrapped


def describe_family(name: str) -> dict[str, Any]:
    """Name, accepted inputs, summary and hyperparameters with defaults, for `layerwise models`."""
    cls = FAMILIES.get(name)
    params = {}
    for key, field in cls.Config.model_fields.items():
        if key == "family":
            continue
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        params[key] = {"default": default, "required": field.is_required(), "description": field.description or ""}
    doc = (cls.__doc__ or "").strip().splitlines()
    return {"family": name, "accepts": sorted(cls.accepts), "summary": doc[0] if doc else "", "params": params}


import_submodules(__name__, skip=("bagging", "layers", "lora", "numeric_embeddings", "summary"))  # each family file registers itself
