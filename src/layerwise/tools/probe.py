"""What a run's features are worth with few labels: ``layerwise probe`` and the report's "Representation".

The standard read-out of self-supervised learning (Chen et al. 2020, SimCLR §4; He et al. 2022,
MAE §4): freeze the model, embed the training and test splits with ``forward_features``, then fit
on a share of the training labels

- a **linear probe**: logistic regression on the standardised features (scikit-learn, L2, C = 1);
- a **k-NN classifier**: majority vote of the ``neighbours`` most cosine-similar labelled samples
  (Wu et al. 2018), which needs no fitting at all (k at most the labelled samples of the largest
  class, so that with a handful of labels per class every class can win a vote);

and score both on the test split (the validation split when there is none). Each budget below 100%
draws its labelled samples stratified (at least one per class), ``draws`` times with different
seeds, and reports the mean. Beside the run's features, on the very same samples: the **raw
inputs** (the normalised pixels or table columns the model reads; a text's token counts) and the **same architecture with
random weights** (seeded by ``train.seed``), so a gain is the training's and not the architecture's.

Any run whose model has ``forward_features`` and whose data has class labels can be probed: a
contrastive or masked-autoencoder pretraining, a fine-tuned classifier, a prototypical network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from pydantic import field_validator

from ..core.errors import RunError
from ..core.sections import register_section
from ..runs.tools import ToolOptions, option, register_tool
from .embed import class_scatter, encode_batches

__all__ = ["ProbeResult", "probe", "probe_features", "label_budget"]

REPORT_TRAIN, REPORT_TEST = 5000, 2000  # the report's probe: enough samples to read, seconds to compute
MAP_POINTS = 600  # the report's t-SNE map: clusters read well, and it takes a few seconds


@dataclass
class ProbeResult:
    rows: list[dict]  # representation, budget, labels, linear, knn
    protocol: str
    embeddings: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # test features by representation
    labels: np.ndarray | None = field(default=None, repr=False)  # the test labels


class ProbeOptions(ToolOptions):
    budgets: list[float] = option([0.01, 0.1, 1.0], "share of the training split's labels the probes learn from "
                                  "(repeatable)", flag="--budget")
    neighbours: int = option(20, "k of the k-NN classifier (cosine similarity, majority vote)", ge=1)
    draws: int = option(3, "labelled subsets drawn for each budget below 1 (their mean is reported)", ge=1)
    max_train: int = option(10000, "training samples embedded at most (the first ones of the split)", ge=1)
    max_test: int = option(5000, "test samples scored at most", ge=1)
    baselines: bool = option(True, "also probe the raw inputs and the architecture with random weights",
                             flag="--no-baselines")

    @field_validator("budgets")
    @classmethod
    def _shares(cls, budgets: list[float]) -> list[float]:
        if not budgets or any(not 0 < b <= 1 for b in budgets):
            raise ValueError(f"each budget is a share of the labels in (0, 1], e.g. 0.01 for 1%; got {budgets}")
        return sorted(set(budgets))


def label_budget(y: np.ndarray, budget: float, seed: int) -> np.ndarray:
    """Indices of a stratified ``budget`` share of ``y``: round(budget x n_c) of each class c, at least one."""
    if budget >= 1:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(y == c), size=max(1, round(budget * (y == c).sum())), replace=False)
             for c in np.unique(y)]
    return np.sort(np.concatenate(picks))


def _linear(z_train: np.ndarray, y_train: np.ndarray, z_test: np.ndarray, y_test: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y_train)) < 2:
        return float(np.mean(y_test == y_train[0]))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return float(model.fit(z_train, y_train).score(z_test, y_test))


def _knn(z_train: np.ndarray, y_train: np.ndarray, z_test: np.ndarray, y_test: np.ndarray, k: int) -> float:
    from sklearn.neighbors import KNeighborsClassifier

    # with a handful of labels, k larger than a class's count lets the biggest classes outvote the rest
    k = min(k, int(np.bincount(y_train).max(initial=1)), len(y_train))
    model = KNeighborsClassifier(n_neighbors=k, metric="cosine")
    return float(model.fit(z_train, y_train).score(z_test, y_test))


def probe_features(z_train: np.ndarray, y_train: np.ndarray, z_test: np.ndarray, y_test: np.ndarray,
                   budgets: list[float], neighbours: int = 20, draws: int = 3, seed: int = 0) -> list[dict]:
    """Linear-probe and k-NN test accuracy of features at each label budget (means over draws)."""
    rows = []
    for budget in budgets:
        linear, knn, labelled = [], [], 0
        for draw in range(draws if budget < 1 else 1):
            chosen = label_budget(y_train, budget, seed + draw)
            labelled = len(chosen)
            linear.append(_linear(z_train[chosen], y_train[chosen], z_test, y_test))
            knn.append(_knn(z_train[chosen], y_train[chosen], z_test, y_test, neighbours))
        rows.append({"budget": budget, "labels": labelled, "linear": float(np.mean(linear)),
                     "knn": float(np.mean(knn))})
    return rows


def _representations(run, with_baselines: bool) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    model = run.model.cpu().eval()
    found = {"this run's features": model.forward_features}
    if with_baselines:
        from ..train.checkpoint import seed_everything
        from ..models import build_model

        seed_everything(run.config.train.seed)
        random_model = build_model(run.config.model.model_copy(update={"init_from": None}), run.spec).eval()
        found["raw inputs"] = _bag_of_tokens(run) if run.spec.kind == "tokens" else (lambda x: x.float())
        found["same architecture, random weights"] = random_model.forward_features
    return found


def _bag_of_tokens(run) -> Callable[[torch.Tensor], torch.Tensor]:
    """Token ids (B, T) -> counts of each vocabulary entry, padding left out: a text's raw features."""
    vocab, pad = int(run.spec.vocab_size), getattr(run.preprocessing.inputs, "pad_id", 0)

    def counts(x: torch.Tensor) -> torch.Tensor:
        bag = torch.zeros(len(x), vocab).scatter_add_(1, x.long(), torch.ones(x.shape))
        bag[:, pad] = 0
        return bag

    return counts


def check_probeable(run) -> None:
    if run.spec.target != "class" or not run.spec.class_names:
        raise RunError(f"probe: {run.path}'s data has no class labels ({run.spec.target} target); probes measure "
                       f"features by how well they classify")
    if not callable(getattr(run.model, "forward_features", None)):
        raise RunError(f"probe: {run.path}'s model has no forward_features to probe")


@register_tool("probe", ProbeOptions)
def probe(run, options: ProbeOptions) -> ProbeResult:
    """Linear-probe and k-NN accuracy of the run's features at label budgets, beside raw inputs and random weights.

    Fits on a share of the training split's labels, scores on the test split (val without one)."""
    check_probeable(run)
    data = run.data
    test_name = "test" if data.test is not None and len(data.test) else "val"
    test = getattr(data, test_name)
    if test is None or not len(test):
        raise RunError(f"probe: {run.path} has neither a test nor a validation split to score on")
    train = data.train
    x_train, y_train = train.x[: options.max_train], train.y[: options.max_train].numpy()
    x_test, y_test = test.x[: options.max_test], test.y[: options.max_test].numpy()
    rows, embeddings = [], {}
    for name, encode in _representations(run, options.baselines).items():
        z_train, z_test = encode_batches(run, x_train, encode), encode_batches(run, x_test, encode)
        embeddings[name] = z_test
        for row in probe_features(z_train, y_train, z_test, y_test, options.budgets, options.neighbours,
                                  options.draws, seed=run.config.data.split_seed):
            rows.append({"representation": name, "features": z_train.shape[1], **row})
    protocol = (f"frozen features of the first {len(x_train)} training samples; probes fitted on a stratified share "
                f"of their labels (mean of {options.draws} draws below 100%), scored on {len(x_test)} samples of the "
                f"{test_name} split; linear: standardised logistic regression; k-NN: {options.neighbours} nearest "
                f"by cosine similarity, majority vote")
    return ProbeResult(rows, protocol, embeddings, y_test)


@probe.printer
def _print(result: ProbeResult, options: ProbeOptions) -> None:
    print(f"protocol: {result.protocol}\n")
    print(_markdown(result.rows))


def _markdown(rows: list[dict]) -> str:
    budgets = sorted({row["budget"] for row in rows})
    head = "| representation | " + " | ".join(f"linear {b:.0%} | k-NN {b:.0%}" for b in budgets) + " |"
    lines = [head, "|" + " --- |" * (1 + 2 * len(budgets))]
    for name in dict.fromkeys(row["representation"] for row in rows):
        cells = {row["budget"]: row for row in rows if row["representation"] == name}
        lines.append(f"| {name} | " + " | ".join(f"{cells[b]['linear']:.3f} | {cells[b]['knn']:.3f}" for b in budgets)
                     + " |")
    return "\n".join(lines)


def _map(embeddings: np.ndarray, labels: np.ndarray, class_names: list) -> str:
    """The test features in two dimensions by t-SNE (van der Maaten & Hinton 2008), coloured by class."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    n = min(len(labels), MAP_POINTS)
    # one thread: beside torch's pool, t-SNE's OpenMP threads can spin for seconds per iteration
    with threadpool_limits(1):
        points = TSNE(n_components=2, init="pca", perplexity=min(30.0, max(2.0, (n - 1) / 3)),
                      random_state=0).fit_transform(embeddings[:n])
    return class_scatter(points, labels[:n], class_names,
                         f"t-SNE of {n} test samples' features, coloured by their class (never seen in pretraining)")


def _chart(rows: list[dict]) -> str:
    from ..core.sections import figure_html, pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.3), sharey=True)
    for ax, key, title in ((axes[0], "linear", "linear probe"), (axes[1], "knn", "k-NN")):
        for name in dict.fromkeys(row["representation"] for row in rows):
            mine = [row for row in rows if row["representation"] == name]
            ax.plot([row["labels"] for row in mine], [row[key] for row in mine], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("labelled training samples")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(fontsize=7)
    return figure_html(fig, "accuracy with few labels: the run's features against raw inputs and random weights")


@register_section("representation")
def _representation_section(run):
    """A pretraining run's features: probes at 1/10/100% of the labels, and a t-SNE map."""
    from ..core.sections import html_table

    if run.config.task not in ("contrastive", "masked_autoencoder", "masked_lm"):
        return None
    try:
        check_probeable(run)
    except RunError:
        return None
    result = probe(run, max_train=REPORT_TRAIN, max_test=REPORT_TEST, draws=1)
    table = [{"representation": row["representation"], "labels": row["labels"], "linear probe": row["linear"],
              "k-NN": row["knn"]} for row in result.rows]
    parts = [_chart(result.rows), html_table(table), f"<p>{result.protocol}.</p>",
             _map(result.embeddings["this run's features"], result.labels, list(run.spec.class_names))]
    return "Representation", "\n".join(parts)
