"""Explanations of a trained run: attributions through Captum, pictures a person can read, and a
table that says how far to trust each explanation.

``explain_run`` picks ``samples`` examples of a split, explains the predicted class (or a named one)
with each method, and writes everything into ``RUN/explain/``: ``explain.json`` (methods, samples,
predictions, the trust table, files), ``attributions.npz`` and the pictures of the input kind —
heat-map overlays for images (:mod:`.images`), signed per-column bar charts and global importance
next to permutation importance for tables (:mod:`.tabular`), token highlighting and attention maps
for text and sequences (:mod:`.sequences`, :mod:`.attention`). The trust table comes from
:func:`.trust.assess` (deletion/insertion against random rankings, infidelity, sensitivity, the
model-randomisation check); the run's report gains an "Explanations" section.

>>> result = layerwise.load_run("runs/digits-...").explain(methods=["integrated_gradients"])  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ...core.errors import ConfigError
from ...core.sections import register_section
from ...data.kinds import input_kind
from ...models.abilities import AttentionMaps, has_ability
from ...runs.tools import ToolOptions, option, register_tool
from .methods import (
    ATTENTION_METHODS,
    METHODS,
    Explained,
    attribute,
    check_methods,
    samples_for,
)

__all__ = [
    "ATTENTION_METHODS",
    "METHODS",
    "ExplainResult",
    "Explained",
    "attribute",
    "explain_run",
    "methods_for",
    "trust_rows",
]

SPLITS = ("test", "val", "train")


@dataclass
class ExplainResult:
    """What ``explain_run`` wrote: the explained samples, their predictions, the trust table."""

    path: str  # the output folder
    kind: str  # the run's input kind
    split: str
    methods: list[str]
    indices: list[int]  # positions of the explained samples in the split
    targets: list[str]  # the class (or output) each sample is explained for
    predictions: list[str]
    labels: list[str] | None
    trust: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> metric -> value
    trust_note: str = ""
    files: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    attributions: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def samples(self) -> int:
        return len(self.indices)

    def to_dict(self, include_attributions: bool = False) -> dict[str, Any]:
        data = asdict(self)
        data.pop("attributions")
        data["samples"] = self.samples
        if include_attributions:
            data["attributions"] = {m: a.tolist() for m, a in self.attributions.items()}
        return data


@dataclass
class _Space:
    """Where a run is explained: the inputs, the model as a function of them, the removed value."""

    x: torch.Tensor  # explained inputs (B, ...)
    forward_for: Callable[[torch.nn.Module], Callable[[torch.Tensor], torch.Tensor]]
    baseline: torch.Tensor | float
    groups: torch.Tensor | None  # feature ids shaped like x (patches, columns, positions) or None
    options: dict[str, Any]  # feature_mask / window for attribute()


def _has_attention(run) -> bool:
    return has_ability(run.model, AttentionMaps)


def methods_for(run) -> list[str]:
    """The methods that fit a run: every Captum method for float inputs and token runs (through the
    embeddings), plus attention and attention rollout for models with attention layers."""
    if input_kind(run.spec).explained_as is None:
        raise ConfigError(f"explain: {run.spec.kind} runs are not supported yet; explain image, tabular, text or "
                          f"sequence runs")
    return list(METHODS) + (list(ATTENTION_METHODS) if _has_attention(run) else [])


def _space(run, stored: torch.Tensor) -> _Space:
    explained_as = input_kind(run.spec).explained_as  # pixels (patches of a picture), columns or positions
    if explained_as == "pixels":
        from . import images

        x = images.pixels(run, stored)
        mask = images.patch_mask(tuple(x.shape[1:]))
        p = images.patch_size(tuple(x.shape[1:]))
        return _Space(x, lambda m: images.pixel_forward(run, m), images.BASELINE, mask.expand_as(x),
                      {"feature_mask": mask, "window": (x.shape[1], p, p)})
    x = run.preprocessing.inputs.batch(stored)
    if explained_as == "columns":
        from . import tabular

        _names, ids = tabular.columns(run)
        x = x.float()
        return _Space(x, lambda m: m.cpu().eval(), tabular.BASELINE, ids.expand_as(x),
                      {"feature_mask": ids, "window": (1,)})
    # tokens and float sequences: explain_sequences and trust_arguments build their own space
    # (token embeddings, the pad embedding as baseline, one group per position) from the model inputs
    return _Space(x, lambda m: m.cpu().eval(), 0.0, None, {})


def _targets(run, x_space: _Space, target: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(the output index explained per sample, the model's outputs) for the explained samples."""
    with torch.no_grad():
        outputs = x_space.forward_for(run.model)(x_space.x)
    if outputs.dim() > 2:  # per-position outputs (a language model): explain the last position
        outputs = outputs[:, -1]
    if target is None:
        index = outputs.argmax(1) if run.spec.target == "class" else torch.zeros(len(outputs), dtype=torch.long)
        return index, outputs
    names = (run.spec.class_names if run.spec.target == "class" else run.spec.target_names) or [
        str(i) for i in range(run.spec.num_outputs)]
    if str(target) not in names:
        what = "class" if run.spec.target == "class" else "target"
        raise ConfigError(f"explain: --target {target!r} is not a {what} of this run; choose one of "
                          f"{', '.join(names[:20])}{'...' if len(names) > 20 else ''}")
    return torch.full((len(outputs),), names.index(str(target)), dtype=torch.long), outputs


def _trust(run, space: _Space, methods: list[str], targets: torch.Tensor, seed: int) -> tuple[dict, str]:
    """trust.assess for each Captum method on the same samples; attention methods have no input
    attribution to remove features by, so they are left out (the note says so)."""
    if run.spec.target != "class":
        return {}, "trust metrics follow the probability of a class: this run is not a classification run"
    from . import trust

    table = {}
    for method in methods:
        if method in ATTENTION_METHODS:
            continue
        if input_kind(run.spec).explained_as == "positions":
            from .sequences import trust_arguments

            table[method] = trust.assess(**trust_arguments(run, space.x, method, seed), target=targets)
            continue

        def explain_for(model, method=method):
            forward = space.forward_for(model)

            def explain(x, t):
                return attribute(method, forward, x, t, baseline=space.baseline, samples=samples_for(method),
                                 seed=seed, **space.options)

            return explain

        table[method] = trust.assess(space.forward_for(run.model), explain_for(run.model), space.x, targets,
                                     baseline=space.baseline, explain_for=explain_for, model=run.model,
                                     groups=space.groups, seed=seed)
    skipped = [m for m in methods if m in ATTENTION_METHODS]
    note = (f"{', '.join(skipped)}: no trust metrics (attention weights are not an attribution of the input "
            f"that features can be removed by)" if skipped else "")
    return table, note


def _plot_trust_curves(run, space: _Space, attributions: dict[str, np.ndarray], targets: torch.Tensor, seed: int,
                       out: Path) -> str:
    """``trust_curves.png``: the deletion and insertion curves behind the trust table's AUCs, with
    the random rankings' curves dashed."""
    from . import trust

    forward = space.forward_for(run.model)
    curves = {m: trust.deletion_insertion(forward, space.x, torch.as_tensor(a), targets, space.baseline,
                                          groups=space.groups, seed=seed) for m, a in attributions.items()}
    curves["random"] = trust.random_curves(forward, space.x, targets, space.baseline, groups=space.groups, seed=seed)
    return str(trust.plot_curves(curves, out / "trust_curves.png", f"{len(space.x)} samples"))


class ExplainOptions(ToolOptions):
    methods: list[str] | None = option(None, "saliency, integrated_gradients, gradient_shap, kernel_shap, lime, "
                                       "occlusion, attention, attention_rollout (repeatable; default: every method "
                                       "that fits the run)", flag="--method")
    samples: int = option(8, "examples to explain")
    target: Any = option(None, "explain this class instead of the predicted one")
    split: Literal["test", "val", "train"] = option("test", "the split the examples come from")
    out_dir: Path | None = option(None, "write here instead of RUN/explain/", cli=False)
    trust: bool = option(True, "the trust table (deletion/insertion curves, sanity checks); --no-trust skips it "
                         "(faster)", flag="--no-trust")
    seed: int = option(0, "picks the samples and seeds sampling methods")
    include_attributions: bool = option(False, "print explain.json, raw attributions included", flag="--json")


@register_tool("explain", ExplainOptions)
def explain_run(run, options: ExplainOptions) -> ExplainResult:
    """Explain a trained RUN's predictions (Captum attributions, pictures, trust table) into RUN/explain/.

    Explains ``samples`` examples of a split with each method; writes ``explain.json`` and pictures
    into ``RUN/explain/`` (or ``out_dir``) and the "Explanations" section of the run's report.

    ``methods``: default every method that fits the run (see :func:`methods_for`); ``target``: a class
    name to explain instead of the predicted class; ``trust``: compute the trust table;
    ``include_attributions``: put the raw attributions into explain.json too.
    """
    methods, samples, target, split, out_dir, trust, seed, include_attributions = (
        options.methods, options.samples, options.target, options.split, options.out_dir, options.trust,
        options.seed, options.include_attributions)
    fits = methods_for(run)
    if methods and any(m in ATTENTION_METHODS for m in methods) and not _has_attention(run):
        from .attention import check_attention

        check_attention(run.model)  # one line: which families have attention, and this run's family
    methods = check_methods(fits if not methods else methods, tuple(fits))
    if samples < 1:
        raise ConfigError(f"explain: samples must be at least 1, got {samples}")
    if split not in SPLITS:
        raise ConfigError(f"explain: unknown split '{split}'; choose one of {', '.join(SPLITS)}")
    part = run.data.split(split)
    pick = torch.randperm(len(part), generator=torch.Generator().manual_seed(seed))[:samples].sort().values
    space = _space(run, part.x[pick])
    targets, outputs = _targets(run, space, target)
    y = part.y[pick] if run.spec.target == "class" else None
    out = Path(out_dir) if out_dir is not None else run.path / "explain"
    out.mkdir(parents=True, exist_ok=True)
    kind = run.spec.kind
    explained_as = input_kind(run.spec).explained_as  # pixels, columns or positions
    if explained_as == "pixels":
        from .images import explain_images

        explained = explain_images(run, space.x, y, targets, methods, out, seed)
    elif explained_as == "columns":
        from .tabular import explain_tabular

        explained = explain_tabular(run, space.x, y, targets, methods, out, seed, split)
    else:
        from .sequences import explain_sequences

        explained = explain_sequences(run, space.x, y, targets, methods, out, seed)
    table, note = _trust(run, space, methods, targets, seed) if trust else ({}, "not computed (--no-trust)")
    if table and explained_as != "positions":  # positions are removed by their own rules (sequences.trust_arguments)
        explained.files.append(_plot_trust_curves(run, space, explained.attributions, targets, seed, out))
    names = run.spec.class_names or [str(i) for i in range(run.spec.num_outputs)]
    if run.spec.target == "class":
        predictions = [names[int(i)] for i in outputs.argmax(1)]
        labels = [names[int(i)] for i in y]
        explained_for = [names[int(i)] for i in targets]
    else:
        scaler = run.preprocessing.scaler
        values = scaler.inverse(outputs) if scaler is not None else outputs
        predictions = [f"{float(v[int(t)]):.4g}" for v, t in zip(values, targets)]
        labels = None
        explained_for = [(run.spec.target_names or names)[int(t)] for t in targets]
    fragment = out / "section.html"  # the report's HTML for this kind (token highlighting), if it has one
    if explained.html:
        fragment.write_text(explained.html, encoding="utf-8")
    elif fragment.exists():
        fragment.unlink()  # left by an earlier explain of another kind of output: the report must not show it
    np.savez_compressed(out / "attributions.npz", **explained.attributions)
    result = ExplainResult(str(out), kind, split, methods, pick.tolist(), explained_for, predictions, labels,
                           table, note, [Path(f).name for f in explained.files], explained.summary,
                           explained.attributions)
    (out / "explain.json").write_text(json.dumps(result.to_dict(include_attributions), indent=2,
                                                 default=_json_default))
    if out.resolve() == (run.path / "explain").resolve():
        run.report()  # the report's Explanations section reads what was just written
    return result


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


# -- the report section ---------------------------------------------------------------------------------


TRUST_COLUMNS = ("deletion_auc", "random_deletion_auc", "insertion_auc", "random_insertion_auc", "infidelity",
                 "sensitivity", "randomisation_spearman")


def trust_rows(trust_table: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """The trust table as rows (one per method), with the randomisation check's verdict."""
    from .trust import RANDOMISATION_PASS

    present = [key for key in TRUST_COLUMNS if any(key in scores for scores in trust_table.values())]
    rows = []
    for method, scores in trust_table.items():
        row: dict[str, Any] = {"method": method}
        row.update({key: scores.get(key, "") for key in present})  # "": not computable for this method
        if "randomisation_spearman" in present:
            spearman = scores.get("randomisation_spearman")
            row["sanity check"] = "" if spearman is None else "pass" if spearman < RANDOMISATION_PASS else "FAIL"
        rows.append(row)
    return rows


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


@register_section("explanations")
def _report_section(run) -> tuple[str, str] | None:
    """Pictures and trust table from ``RUN/explain/explain.json``, when explain has been run."""
    folder = run.path / "explain"
    path = folder / "explain.json"
    if not path.is_file():
        return None
    from ...core.sections import html_table
    from ...runs.trust import inside

    saved = json.loads(path.read_text())
    intro = (f"<p>{len(saved['indices'])} {html.escape(saved['split'])} samples, methods: "
             f"{html.escape(', '.join(saved['methods']))}; explained for: "
             f"{html.escape(' '.join(saved['targets']))}</p>")
    parts = [intro]
    fragment = folder / "section.html"
    if fragment.is_file():
        parts.append(fragment.read_text(encoding="utf-8"))
    else:  # picture names come from a file in the run: only pictures inside its explain/ folder
        pictures = [inside(folder, name, "explain.json: files") for name in saved["files"] if name.endswith(".png")]
        parts += [_img(picture) for picture in pictures if picture.is_file()]
    if saved.get("trust"):
        parts.append("<h3>How far to trust each explanation</h3>"
                     "<p>Deletion AUC: lower is better; insertion AUC: higher is better; each against random "
                     "rankings. Infidelity, sensitivity: lower is better. Randomisation Spearman: low means "
                     "the explanation changes when the weights are randomised (it passes).</p>")
        parts.append(html_table(trust_rows(saved["trust"])))
    if saved.get("trust_note"):
        parts.append(f"<p>{html.escape(saved['trust_note'])}</p>")
    return "Explanations", "\n".join(parts)


@explain_run.printer
def _print(result: ExplainResult, options: ExplainOptions) -> None:
    from ...core.console import rows_table

    if options.include_attributions:  # --json
        print((Path(result.path) / "explain.json").read_text())
        return
    short = {"random_deletion_auc": "random del.", "random_insertion_auc": "random ins.",
             "randomisation_spearman": "rand. spearman"}
    rows_table(f"how far to trust each explanation ({result.samples} {options.split} samples)",
               trust_rows(result.trust), left=("method", "sanity check"), headers=short)
    if result.trust_note:
        print(result.trust_note)
    print(f"explanations: {result.path}")
