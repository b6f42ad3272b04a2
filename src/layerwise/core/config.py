"""The experiment config: a YAML file validated up front, before any data or device is touched.

Validation runs in two stages (as Ludwig does): the top-level sections first, then each section
against the schema its registry names — ``data`` against the source's schema, ``model`` against
the family's, ``task`` against the task's. Unknown keys are rejected with a close-match suggestion,
and every message names the key path, what was expected and what was received.
"""

from __future__ import annotations

import copy
import sys
import warnings
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, SerializeAsAny, ValidationError, field_validator

from .errors import ConfigError
from .registry import did_you_mean

__all__ = [
    "Section",
    "DataConfig",
    "LoRAConfig",
    "ModelConfig",
    "TaskConfig",
    "AugmentConfig",
    "SchedulerConfig",
    "EarlyStoppingConfig",
    "AdversarialConfig",
    "CheckpointsConfig",
    "UnfreezeConfig",
    "TrainConfig",
    "EvaluateConfig",
    "ExperimentConfig",
    "ConfigDeprecationWarning",
    "warn_deprecated",
    "apply_overrides",
    "parse_override",
    "read_yaml",
    "check_nesting",
    "YAMLValueError",
]


class Section(BaseModel):
    """A config section: unknown keys are errors, values are checked on assignment too, and numbers
    must be finite (``lr: .inf`` would pass every ``gt=0`` and diverge at the first step)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)


class AugmentConfig(Section):
    """On-the-fly image augmentation, applied to training batches only."""

    shift: float = Field(0.0, ge=0, le=0.5, description="max random translation, fraction of the image size")
    rotation: float = Field(0.0, ge=0, le=180, description="max random rotation in degrees")
    scale: float = Field(0.0, ge=0, le=0.5, description="max random zoom in or out, fraction")
    flip: bool = Field(False, description="random horizontal flip (not for digits!)")
    noise: float = Field(0.0, ge=0, description="std of Gaussian noise added after normalization")


class DataConfig(Section):
    """Keys every data source accepts; each source's schema adds its own (``path``, ``name``...)."""

    source: str = Field("builtin", description="where the data comes from: builtin, csv, parquet, idx, synthetic, "
                        "image_folder, npz, timeseries, text, pairs")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of the training data held out for validation")
    test_fraction: float = Field(
        0.2, ge=0, lt=1, description="share held out for testing, when the source has no test split of its own"
    )
    split_seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the stratified train/val/test split")
    normalize: bool = Field(True, description="standardize inputs with statistics of the training split")
    augment: AugmentConfig | None = Field(None, description="image augmentation on the fly (off when absent)")
    sampler: Literal["random", "weighted"] = Field(
        "random", description="'weighted' draws classes equally often (for imbalanced data)"
    )
    limit: int | None = Field(None, ge=1, description="use only the first N training samples (quick trials)")


class LoRAConfig(Section):
    """Low-rank adapters beside the linear layers a fine-tuning adapts (layerwise.models.lora)."""

    rank: int = Field(8, ge=1, description="r: the rank of each adapter (B A)")
    alpha: float = Field(16.0, gt=0, description="the adapter's output is scaled by alpha / rank")
    targets: list[str] = Field(default_factory=lambda: ["*c_attn", "*c_proj", "*c_fc"], min_length=1,
                               description="glob patterns of linear layers' module names to adapt (by default the "
                                           "attention and MLP projections of the transformer families; "
                                           "`layerwise models show` lists the names)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input, in training")


class ModelConfig(Section):
    """Keys every model family accepts; each family's schema adds its hyperparameters."""

    family: str = Field("cnn", description="the model family, see `layerwise models`")
    init_from: str | None = Field(None, description="start from another run's weights (a run directory or a "
                                  ".safetensors file): layers that fit are loaded, the head is re-initialised "
                                  "when its shape differs; see docs/transfer-learning.md")
    bags: int = Field(1, ge=1, le=32, description="members of a bag (Breiman 1996): each fitted on its own folds of the "
                      "training rows with early stopping on the fold left out, their predictions averaged; "
                      "classification and regression; see docs/tabular.md")
    lora: LoRAConfig | None = Field(None, description="LoRA: train low-rank adapters beside the chosen linear layers "
                                    "(and the head) instead of the whole model, merged into the weights for inference "
                                    "and export: {rank: 8, alpha: 16}; see docs/transfer-learning.md")


class TaskConfig(Section):
    """Keys every task accepts: none. A task with options declares its own schema (``Task.Config``),
    whose keys sit beside ``name`` in ``task: {name: classification, label_smoothing: 0.1}``."""


class SchedulerConfig(Section):
    """A learning-rate schedule; the keys a schedule does not use are ignored by it."""

    name: str = Field("none", description="none, step, cosine, onecycle, warmup_cosine, plateau")
    step_size: int = Field(10, ge=1, description="step: epochs between decays")
    gamma: float = Field(0.1, gt=0, description="step: decay factor")
    warmup_fraction: float = Field(0.05, ge=0, lt=1, description="warmup_cosine: share of steps spent warming up")
    max_lr: float | None = Field(None, gt=0, description="onecycle: peak learning rate (default: train.lr)")
    pct_start: float = Field(0.25, gt=0, lt=1, description="onecycle: share of steps spent increasing")
    min_lr: float = Field(0.0, ge=0, description="cosine, warmup_cosine, plateau: floor of the learning rate")
    patience: int = Field(3, ge=0, description="plateau: epochs without improvement before a decay")
    factor: float = Field(0.1, gt=0, lt=1, description="plateau: decay factor")
    monitor: str = Field("val_loss", description="plateau: the metric watched")


class EarlyStoppingConfig(Section):
    monitor: str = Field("val_loss", description="metric watched, e.g. val_loss or val_accuracy")
    patience: int = Field(5, ge=0, description="epochs without improvement before stopping")
    mode: Literal["auto", "min", "max"] = Field("auto", description="auto: max for accuracy-like metrics")
    min_delta: float = Field(0.0, ge=0, description="smallest change that counts as an improvement")
    restore_best: bool = Field(True, description="end with the weights of the best epoch")


class AdversarialConfig(Section):
    """Adversarial training (Madry et al. 2018): train on attacked versions of the training batches."""

    method: Literal["pgd", "fgsm"] = Field("pgd", description="the attack that makes the training batches")
    eps: float = Field(..., gt=0, description="attack strength: images in pixel units of [0, 1], other inputs in "
                       "training standard deviations")
    steps: int = Field(10, ge=1, description="pgd: attack steps per batch (and of the final robust accuracy)")
    step_size: float | None = Field(None, gt=0, description="pgd: step size (default 2.5 * eps / steps)")
    norm: Literal["linf", "l2"] = Field("linf", description="the norm of the eps-ball")
    ratio: float = Field(1.0, gt=0, le=1, description="share of each batch replaced by its adversarial version "
                         "(1: Madry's pure adversarial training, 0.5: half clean, half adversarial)")
    start_epoch: int = Field(0, ge=0, description="epochs trained on clean batches first (warm-up)")
    eval_samples: int = Field(500, ge=0, description="test samples attacked with PGD after training for the "
                              "robust accuracy in metrics.json (0: skip)")


class CheckpointsConfig(Section):
    """Which checkpoints a run keeps beside ``checkpoints/last.pt`` (the one a resume reads)."""

    keep_last: int = Field(1, ge=1, description="the last N checkpoints (checkpoints/step-NNNNNNNN.pt beside "
                           "last.pt): a way back past a checkpoint that was already going wrong")
    keep_best: bool = Field(False, description="also keep checkpoints/best.pt, the epoch with the best monitored "
                            "metric")
    monitor: str = Field("val_loss", description="keep_best: the metric watched (val_loss, val_accuracy...)")


class UnfreezeConfig(Section):
    """Which layers train when, for fine-tuning a loaded model (docs/transfer-learning.md)."""

    head_epochs: int = Field(0, ge=0, description="epochs in which only the output layer (head) trains: a new "
                             "head settles before its gradients reach the loaded features (LP-FT, Kumar et al. 2022)")
    every: int = Field(0, ge=0, description="then one more layer group, from the top, every this many epochs "
                       "(gradual unfreezing, Howard & Ruder 2018); 0: every layer at once")


class TrainConfig(Section):
    epochs: int = Field(10, ge=1, description="passes over the training data")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    max_time: float | None = Field(None, gt=0, description="stop after this many seconds of training (a time "
                                   "budget; validation time does not count)")
    batch_size: int = Field(64, ge=1, description="samples per optimizer step (before accumulation)")
    accumulate: int = Field(1, ge=1, description="micro-batches per optimizer step (gradient accumulation)")
    optimizer: str = Field("adamw", description="sgd, adam, adamw, rmsprop")
    lr: float = Field(1e-3, gt=0, description="learning rate")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty (decoupled for adamw)")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd and rmsprop momentum")
    nesterov: bool = Field(False, description="sgd: Nesterov momentum")
    betas: tuple[float, float] = Field((0.9, 0.999), description="adam/adamw betas")
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig, description="learning-rate schedule")
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient norm to this value")
    freeze: list[str] = Field(default_factory=list, description="glob patterns of parameter names kept as they are "
                              "(e.g. 'body.*' after model.init_from); a pattern matching nothing is refused")
    unfreeze: UnfreezeConfig | None = Field(None, description="train the head alone first, then unfreeze layer "
                                            "groups from the top: {head_epochs: 2, every: 1}; train.freeze stays frozen")
    layer_lr_scale: dict[str, PositiveFloat] = Field(default_factory=dict, description="learning-rate multipliers by glob pattern "
                                       "of parameter names, e.g. {'body.*': 0.1}: the loaded layers learn slower than "
                                       "a new head (the first matching pattern wins)")
    early_stopping: EarlyStoppingConfig | None = Field(None, description="stop when a metric stops improving")
    strategy: str = Field("local", description="how the fit runs: local (the one loop, in this process); see "
                          "docs/training.md")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seeds weights, shuffling, dropout and augmentation")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:N, mps")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 runs forward passes under autocast")
    checkpoint_every: int | None = Field(None, ge=1, description="also checkpoint every N steps (mid-epoch)")
    checkpoints: CheckpointsConfig = Field(default_factory=CheckpointsConfig, description="checkpoints kept: "
                                           "the last N, the best; a checkpoint is only written of finite weights")
    log_every: int = Field(50, ge=1, description="steps between progress updates and NaN checks")
    progress: bool = Field(True, description="show a progress bar")
    energy: Literal["auto", "rapl", "codecarbon", "estimate", "off"] = Field(
        "auto", description="energy/CO2 accounting: auto (RAPL counters when readable, else a CPU-time estimate), "
        "rapl, codecarbon (costs ~2 s to start), estimate, off; see docs/energy.md")
    energy_country: str | None = Field(None, pattern=r"^[A-Za-z]{3}$", description="ISO 3166 alpha-3 country "
                                       "for the CO2 factor (e.g. FRA); empty: world average 475 g/kWh")

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler_name(cls, value: Any) -> Any:
        if value is None:
            return {"name": "none"}
        return {"name": value} if isinstance(value, str) else value

    @field_validator("early_stopping", mode="before")
    @classmethod
    def _early_stopping_flag(cls, value: Any) -> Any:
        if value is True:
            return {}
        return None if value is False else value

    @field_validator("energy", mode="before")
    @classmethod
    def _energy_flag(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` as false and `on` as true
        return {False: "off", True: "auto"}.get(value, value) if isinstance(value, bool) else value


class EvaluateConfig(Section):
    split: Literal["test", "val", "train"] = Field("test", description="split scored after training")
    batch_size: int = Field(512, ge=1, description="evaluation batch size (memory stays flat)")
    auc_thresholds: int = Field(
        200, ge=10, description="score bins for streaming ROC-AUC (constant memory; exact as bins grow)"
    )
    misclassified: int = Field(32, ge=0, description="misclassified examples shown in the report")
    baselines: bool = Field(
        True, description="tabular classification and regression runs: also fit logistic or ridge regression and "
                          "HistGradientBoosting on the same training split and score them like the network "
                          "(metrics.json and the report); false skips them")


class ExperimentConfig(Section):
    """A whole experiment. Build it with :func:`load_config`, which validates every section.

    The YAML's ``task:`` is a name (``task: classification``) or a mapping of the name and the task's
    options (``task: {name: classification, label_smoothing: 0.1}``). Here it is two fields: ``task``,
    the name (None until the run infers it from the data and family), and ``task_options``, the options
    validated against that task's own schema (``TASKS.get(name).Config``). The name stays a plain
    string because that is what every feature asks of a run (``config.task == "vae"``,
    ``TASKS.get(config.task)``); the options are read only by the task built from them.
    ``task_options`` is not a YAML key of its own: :meth:`to_dict` folds it back into ``task``.
    Before the task is known (``task`` None), ``task_options`` holds options given for the task the
    data will imply (a ``task:`` mapping without ``name``, or a deprecated spelling such as
    ``train.label_smoothing``); preparing a run checks them against the task it infers.
    """

    # max_length: the run's folder, NAME-TIMESTAMP (staged as .NAME-TIMESTAMP-XXXXXXXX.partial), must fit
    # the file system's 255 bytes
    name: str = Field("experiment", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=200,
                      description="run name prefix")
    recipe: Literal["fast", "default", "best"] = Field(
        "default", description="tabular data: how the fields left unset are chosen from the table's size and task "
        "(fast: a small model, few epochs; default; best: an ensemble, longer training); see docs/tabular.md")
    data: SerializeAsAny[DataConfig] = Field(default_factory=DataConfig)
    model: SerializeAsAny[ModelConfig] = Field(default_factory=ModelConfig)
    task: str | None = Field(None, description="the task's name; implied by the data and the model family when "
                             "absent")
    task_options: SerializeAsAny[TaskConfig] | None = Field(
        None, exclude=True, description="the task's options, of the task's own schema (written inside `task:`)")
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain data that :func:`load_config` turns back into an equal config."""
        out = self.model_dump(mode="json")
        options = self.task_options
        if options is not None and type(options).model_fields:  # the long form, when the task has options
            dumped = options.model_dump(mode="json")
            out["task"] = {"name": self.task, **dumped} if self.task is not None else dumped
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ----------------------------------------------------------------------------------------------
# validation


def _describe(value: Any) -> str:
    """A value as a message shows it: its repr, cut to 60 characters."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"an integer of about {value.bit_length() * 0.30103:.0f} digits"  # Python refuses repr past 4300
    try:
        text = repr(value)
    except RecursionError:
        text = f"a {type(value).__name__} nested too deeply to show"
    return text if len(text) <= 60 else text[:57] + "..."


def _key(part: Any) -> str:
    """A key or name the user wrote, as a message shows it: itself when it is a short printable
    word, else its repr (a newline in a key would break the one-line message), cut to 40 characters."""
    text = part if isinstance(part, str) else str(part)
    if not text.isprintable() or not text.strip() or len(text) > 40:
        text = repr(text) if len(text) <= 40 else repr(text[:30]) + "..."
    return text


def _format_error(exc: ValidationError, prefix: str, schema: type[BaseModel],
                  origins: Mapping[str, str] | None = None) -> ConfigError:
    """One line for the first pydantic error, naming the full key path.

    ``origins`` maps a key of the section to the path the user wrote it at (a deprecated spelling,
    ``adversarial_training`` -> ``train.adversarial``): its errors name that path."""
    errors = exc.errors()
    first = errors[0]
    loc = [_key(part) for part in first["loc"] if not str(part).startswith("function-")]
    # pydantic reports a union's branches in the path ("str", "list[float]"); users never wrote them
    loc = [p for p in loc if p not in {"str", "int", "float", "bool", "list[float]", "literal['balanced']"}]
    path = ".".join([prefix, *loc]) if prefix else ".".join(loc)
    if origins and loc and loc[0] in origins:
        path = ".".join([origins[loc[0]], *loc[1:]])
    if first["type"] == "extra_forbidden":
        known = _known_keys(schema, loc[:-1])
        message = f"{path}: unknown key{did_you_mean(loc[-1], known)}"
        if known:
            message += f"; valid keys here: {', '.join(known)}"
    elif first["type"] == "missing":
        message = f"{path}: required key is missing"
    elif first["type"] == "value_error":
        # a schema's own check (e.g. across fields): its message already says what to do
        text = first["msg"].removeprefix("Value error, ")
        message = text if prefix and text.startswith(prefix) else f"{path}: {text}"
    elif first["type"] == "literal_error" and isinstance(first.get("input"), str):
        choices = [c.strip(" '") for c in first.get("ctx", {}).get("expected", "").replace(" or ", ",").split(",")]
        choices = [c for c in choices if c]
        message = (f"{path}: unknown value {_describe(first['input'])}{did_you_mean(first['input'], choices)}; "
                   f"choose one of: {', '.join(choices)}")
    else:
        message = f"{path}: {first['msg'].rstrip('.')}; received {_describe(first.get('input'))}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    # a schema's own check may quote a value the user wrote with a line break in it
    return ConfigError(message.replace("\r", "\\r").replace("\n", "\\n"))


def _known_keys(schema: type[BaseModel], loc: list[str]) -> list[str]:
    """The keys a (nested) section accepts, for suggestions."""
    model: Any = schema
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
        for arg in getattr(model, "__args__", ()) or ():  # Optional[Section]
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                model = arg
    return sorted(getattr(model, "model_fields", {}))


def validate_section(schema: type[BaseModel], raw: Any, prefix: str, origins: Mapping[str, str] | None = None) -> Any:
    """Validate one section, turning pydantic's report into a one-line :class:`ConfigError`
    (``origins``: keys the user wrote elsewhere, see :func:`_format_error`)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix}: expected a mapping of keys to values; received {_describe(raw)}")
    try:
        return schema.model_validate(dict(raw))
    except ValidationError as exc:
        raise _format_error(exc, prefix, schema, origins) from None


class ConfigDeprecationWarning(DeprecationWarning):
    """A config key written where it used to live: accepted for one more release, moved to its new
    place; the message gives the new spelling. The CLI prints these as ``warning:`` lines."""


def warn_deprecated(message: str) -> None:
    """Emit a :class:`ConfigDeprecationWarning` attributed to the first caller outside layerwise, so the
    caller's warning filters decide (Python shows it by default when that caller is a script)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] == "layerwise":
        frame, level = frame.f_back, level + 1
    warnings.warn(message, ConfigDeprecationWarning, stacklevel=level)


def with_defaults(section: BaseModel, defaults: Mapping[str, Any], prefix: str) -> BaseModel:
    """``section`` with ``defaults`` for the fields it has and the user did not set, validated again.

    >>> with_defaults(model_cfg, {"causal": True, "pooling": "last"}, "model")  # doctest: +SKIP
    """
    implied = {k: v for k, v in defaults.items() if k in type(section).model_fields and k not in section.model_fields_set}
    if not implied:
        return section
    explicit = section.model_dump(include=section.model_fields_set)
    return validate_section(type(section), {**implied, **explicit}, prefix)


# ----------------------------------------------------------------------------------------------
# reading YAML

MAX_DEPTH = 32  # levels of nesting a config may have (the deepest real key sits 3 levels down)
MAX_VALUES = 1_000_000  # values in a config, an alias counted at each use: a "billion laughs" file stops here


class YAMLValueError(yaml.MarkedYAMLError):
    """A scalar PyYAML cannot build as the type its form or tag says: ``2020-13-45`` (a date, month
    13), ``!!int abc``, an integer of more than 4300 digits. PyYAML lets these escape as bare
    ValueError, AttributeError...; here they are YAML errors with a position."""

    def __init__(self, value: str, kind: str, reason: str, mark: Any):
        article = "an" if kind[:1] in "aeiou" else "a"
        super().__init__(problem=f"cannot read {value} as {article} {kind}" + (f" ({reason})" if reason else ""),
                         problem_mark=mark)


class _Loader(yaml.SafeLoader):
    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, AttributeError, LookupError, OverflowError) as exc:
            value = _describe(node.value) if isinstance(node.value, str) else "this value"
            # Python's own reasons only: AttributeError or KeyError is PyYAML tripping over a regex miss;
            # the integer limit's message goes on with advice for programmers after its ';'
            reason = str(exc).partition(";")[0] if isinstance(exc, (ValueError, OverflowError)) else ""
            reason = reason if len(reason) <= 80 else reason.partition(":")[0][:80]
            raise YAMLValueError(value, node.tag.rpartition(":")[2], reason, node.start_mark) from None


def read_yaml(text: str) -> Any:
    """``yaml.safe_load`` whose every bad value is a :class:`yaml.YAMLError` with a position (a
    RecursionError still escapes for brackets nested hundreds deep: the caller says which file)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def check_nesting(raw: Any) -> None:
    """Refuse a config nested more than :data:`MAX_DEPTH` levels deep, holding more than
    :data:`MAX_VALUES` values, or holding itself (``x: &a [*a]``): copying and validating those
    would exhaust the stack or the clock."""
    count = 0

    def where(path: tuple[Any, ...]) -> str:
        return ".".join(_key(p) for p in path[:4]) + ("..." if len(path) > 4 else "") or "config"

    def visit(value: Any, path: tuple[Any, ...], ancestors: frozenset[int]) -> None:
        nonlocal count
        count += 1
        if count > MAX_VALUES:
            raise ConfigError(f"{where(path)}: the config holds more than {MAX_VALUES:,} values (a YAML alias "
                              f"counts at each use); write it out smaller")
        if isinstance(value, Mapping):
            children = list(value.items())
        elif isinstance(value, (list, tuple, set, frozenset)):
            children = list(enumerate(value))
        else:
            return
        if id(value) in ancestors:
            raise ConfigError(f"{where(path)}: holds itself (a YAML alias inside its own anchor); write the value out")
        if len(path) >= MAX_DEPTH:
            raise ConfigError(f"{where(path)}: nested more than {MAX_DEPTH} levels deep; a config is a few levels "
                              f"of sections")
        for key, child in children:
            visit(child, (*path, key), ancestors | {id(value)})

    visit(raw, (), frozenset())


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.epochs=3"`` → ``("train.epochs", 3)``; the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {_describe(text)}: expected KEY=VALUE, e.g. --set train.epochs=3")
    try:
        parsed = read_yaml(value) if value.strip() else None
    except (yaml.YAMLError, RecursionError):  # not YAML: the text itself, which validation may refuse
        parsed = value
    return key.strip(), parsed


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``train.epochs``, or ``train__epochs`` from Python kwargs) in a raw config."""
    result = copy.deepcopy(dict(raw))
    for dotted, value in overrides.items():
        parts = dotted.replace("__", ".").split(".")
        node = result
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            # shorthands that stand for a section: `scheduler: cosine`, `task: classification`, `early_stopping: true`
            shorthand = (isinstance(child, str) and part in ("scheduler", "task")
                         or child is True and part == "early_stopping")
            if child is None or shorthand:
                child = {"name": child} if isinstance(child, str) else {}
                node[part] = child
            if not isinstance(child, dict):
                raise ConfigError(f"--set {_key(dotted)}: '{_key('.'.join(parts[: i + 1]))}' is a value, not a section")
            node = child
        if isinstance(value, Mapping) and isinstance(node.get(parts[-1]), Mapping):
            node[parts[-1]] = {**node[parts[-1]], **value}
        else:
            node[parts[-1]] = value
    return result
