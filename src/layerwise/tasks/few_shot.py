"""Few-shot classification with prototypical networks (Snell, Swersky & Zemel 2017, "Prototypical
Networks for Few-shot Learning"): learn an embedding in which a class is the mean of a few examples.

Training runs in episodes (``data/episodes.py``): ``ways`` classes, ``shots`` labelled examples of
each (the support set) and ``queries`` more to classify. The model's features (``forward_features``,
any family) embed every sample; each class's prototype is the mean of its support embeddings, and a
query's logits are the negative squared Euclidean distances to the prototypes, trained with
cross-entropy. The head is not used: the classes of an episode are whatever it drew.

What it measures is learning *new* classes from a handful of examples: ``held_out`` classes (by
default the second half of the class list) never appear in training. Training episodes draw the
other classes from the training split, validation episodes the same classes from the validation
split (unseen samples), and the final score draws ``eval_episodes`` episodes of the held-out classes
from the test split for each of ``eval_shots`` (1 and 5 by default): mean accuracy with a 95%
confidence interval over episodes (1.96 standard errors), the protocol of the paper's Omniglot
and miniImageNet tables.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from ..core.config import TaskConfig
from ..core.errors import ConfigError
from ..core.sections import figure_html, html_table, pyplot, register_section
from . import StepOutput, Task, register_task

__all__ = ["Prototypical", "PrototypicalConfig", "EpisodeEvaluator"]


class PrototypicalConfig(TaskConfig):
    """``task: {name: prototypical, ways: 5, shots: 5, ...}``."""

    ways: int = Field(5, ge=2, description="classes per episode (N-way)")
    shots: int = Field(5, ge=1, description="labelled examples per class in a training episode (K-shot)")
    queries: int = Field(15, ge=1, description="examples per class to classify in an episode")
    episodes: int = Field(100, ge=1, description="training episodes per epoch")
    held_out: list[str] | None = Field(None, description="class names never trained on, the few-shot test (default: "
                                                          "the second half of the class list)")
    eval_shots: list[int] = Field(default_factory=lambda: [1, 5], min_length=1,
                                  description="shots of the test episodes on the held-out classes, one score each")
    eval_episodes: int = Field(600, ge=2, description="test episodes for each of eval_shots (600: the paper's protocol)")
    val_episodes: int = Field(100, ge=2, description="validation episodes (training classes, validation samples)")


@register_task("prototypical")
class Prototypical(Task):
    target = "class"
    predicts_target = False  # an episode's labels are its own 0 .. ways - 1, not the data's classes
    embeds = True  # the model's features are the product: `layerwise embed` writes them
    main_metric = "accuracy"
    greater_is_better = {"accuracy": True}
    Config = PrototypicalConfig

    def __init__(self, spec, train_cfg, preprocessing, train_labels=None, config=None):
        super().__init__(spec, train_cfg, preprocessing, train_labels, config)
        names = [str(n) for n in spec.class_names]
        held = self.config.held_out if self.config.held_out is not None else names[len(names) // 2:]
        unknown = [n for n in held if n not in names]
        if unknown:
            raise ConfigError(f"task.held_out: {unknown[0]!r} is not a class of the data; its classes are "
                              f"{', '.join(names)}")
        self.held_out = [names.index(n) for n in held]
        self.training_classes = [i for i in range(len(names)) if i not in self.held_out]
        for what, classes in (("held-out", self.held_out), ("training", self.training_classes)):
            if len(classes) < self.config.ways:
                raise ConfigError(f"task.held_out: {len(classes)} {what} classes, fewer than task.ways "
                                  f"({self.config.ways}); move classes between the two or lower task.ways")

    def check_model(self, model: torch.nn.Module) -> None:
        if not callable(getattr(model, "forward_features", None)):
            raise ConfigError(f"task prototypical: embeds with the model's forward_features; "
                              f"{type(model).__name__} has none")

    # -- episodes -------------------------------------------------------------------------------
    def loader(self, split, name: str, cfg, transform, device):
        """Episodes of ``split``: the training classes for the train and val splits, the held-out ones
        for the test split and for other labelled data (``evaluate --data``)."""
        from ..data.episodes import EpisodeLoader

        c = self.config
        shots, episodes = {"train": (c.shots, c.episodes), "val": (c.shots, c.val_episodes)}.get(
            name, (c.eval_shots, c.eval_episodes))
        classes = self.training_classes if name in ("train", "val") else self.held_out
        # training episodes change every epoch (the run's seed); evaluation draws the same ones every time
        seed = cfg.train.seed if name == "train" else cfg.data.split_seed
        return EpisodeLoader(split, classes, c.ways, shots, c.queries, episodes, seed=seed, transform=transform,
                             device=device, what=f"{name} episodes", names=self.spec.class_names)

    def _episode(self, model, batch) -> StepOutput:
        from ..data.episodes import episode_layout

        x, y = batch
        ways, queries = self.config.ways, self.config.queries
        shots = episode_layout(len(x), ways, queries)
        z = model.forward_features(x).flatten(1).float()
        support, query = z[: ways * shots], z[ways * shots:]
        prototypes = support.view(ways, shots, -1).mean(1)  # one per class, in the episode's order
        logits = -torch.cdist(query, prototypes).pow(2)
        labels = y[ways * shots:]
        return StepOutput(F.cross_entropy(logits, labels), len(labels), logits,
                          {"accuracy": (logits.detach().argmax(1) == labels).sum()})

    def training_step(self, model, batch, ctx) -> StepOutput:
        return self._episode(model, batch)

    def evaluation_step(self, model, batch) -> StepOutput:
        return self._episode(model, batch)

    def summarize(self, sums: dict[str, float], count: float) -> dict[str, float]:
        """The epoch's training accuracy: ``count`` is the samples seen, support included; a training
        episode has ``queries`` of every ``shots + queries`` samples to classify."""
        c = self.config
        queries = count * c.queries / (c.shots + c.queries)
        return {k: v / max(queries, 1e-12) for k, v in sums.items()}

    def predict(self, outputs):
        raise ConfigError("task prototypical: a few-shot model classifies against a support set of labelled "
                          "examples, not a fixed label set; embed inputs with `layerwise embed RUN INPUT` and compare "
                          "them with your examples' embeddings")

    def evaluator(self, eval_cfg):
        return EpisodeEvaluator(self.config.ways, self.config.shots)


class EpisodeEvaluator:
    """Accuracy over episodes: the mean and a 95% confidence interval (1.96 standard errors), for
    each number of shots the episodes had."""

    def __init__(self, ways: int, main_shots: int):
        self.ways, self.main_shots = ways, main_shots
        self.scores: dict[int, list[float]] = {}

    def update(self, outputs: torch.Tensor, y: torch.Tensor, x=None) -> None:
        queries = len(outputs)
        shots = (len(y) - queries) // self.ways
        accuracy = (outputs.argmax(1) == y[-queries:]).float().mean().item()
        self.scores.setdefault(shots, []).append(accuracy)

    def compute(self, class_names=None):
        from .evaluation import EvalResult

        metrics: dict[str, float] = {}
        for shots, scores in sorted(self.scores.items()):
            values = np.array(scores)
            half = 1.96 * values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
            metrics[f"accuracy_{shots}shot"], metrics[f"ci95_{shots}shot"] = float(values.mean()), float(half)
        main = self.main_shots if self.main_shots in self.scores else min(self.scores, default=None)
        if main is not None:
            metrics["accuracy"] = metrics[f"accuracy_{main}shot"]
        return EvalResult(metrics, {"episodes": {k: len(v) for k, v in self.scores.items()}})


@register_section("few_shot")
def few_shot_section(run) -> tuple[str, str] | None:
    """The report's "Few-shot": accuracy by shots with its interval, and the held-out classes' embeddings."""
    if run.config.task != "prototypical":
        return None
    metrics = run.metrics.get("metrics", {})
    shots = sorted(int(k[len("accuracy_"):-len("shot")]) for k in metrics if k.startswith("accuracy_"))
    if not shots:
        return None
    options = run.config.task_options
    rows = [{"shots": k, "accuracy": metrics[f"accuracy_{k}shot"], "± 95% CI": metrics[f"ci95_{k}shot"],
             "episodes": run.metrics.get("details", {}).get("episodes", {}).get(str(k))} for k in shots]
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    axes[0].bar([f"{k}-shot" for k in shots], [metrics[f"accuracy_{k}shot"] for k in shots],
                yerr=[metrics[f"ci95_{k}shot"] for k in shots], capsize=6, color="tab:blue")
    axes[0].axhline(1 / options.ways, color="grey", linestyle="--", linewidth=1, label=f"chance (1/{options.ways})")
    axes[0].set_ylim(0, 1)
    axes[0].set_ylabel(f"{options.ways}-way accuracy on held-out classes")
    axes[0].legend(fontsize=8)
    _embedding_map(run, axes[1])
    parts = [figure_html(fig, "few-shot accuracy by shots with 95% intervals, and held-out classes' embeddings"),
             html_table(rows),
             f"<p>{options.ways}-way episodes of the held-out classes ({', '.join(map(str, _held_out(run)))}), never "
             f"trained on, from the test split; {options.queries} queries per class; the interval is 1.96 standard "
             f"errors over episodes.</p>"]
    return "Few-shot", "\n".join(parts)


def _held_out(run) -> list[Any]:
    task = run.task
    return [run.spec.class_names[i] for i in task.held_out]


@torch.no_grad()
def _embedding_map(run, ax) -> None:
    """The held-out classes' test samples embedded and projected on two principal components."""
    test = run.data.test if run.data.test is not None else run.data.val
    task, model = run.task, run.model.cpu().eval()
    keep = torch.isin(test.y, torch.tensor(task.held_out))
    x, y = test.x[keep][:500], test.y[keep][:500]
    z = model.forward_features(run.preprocessing.inputs.batch(x).float()).flatten(1)
    z = z - z.mean(0)
    _, _, v = torch.pca_lowrank(z, q=2, center=False)
    points = (z @ v[:, :2]).numpy()
    for c in task.held_out:
        mask = (y == c).numpy()
        ax.scatter(points[mask, 0], points[mask, 1], s=8, label=str(run.spec.class_names[c]))
    ax.set_title("held-out classes, embedded (PCA)", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=2)
