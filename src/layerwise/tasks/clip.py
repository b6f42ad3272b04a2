"""Image–text contrastive learning (Radford et al. 2021, "Learning Transferable Visual Models From
Natural Language Supervision", CLIP).

Two encoders map a batch of N image–caption pairs into one space: the run's model (any image
family) embeds the images, a text encoder (any token family, ``text``: by default a small
transformer) the captions; a linear projection each, then unit length. The N x N cosine similarities,
scaled by a learned temperature (``logit_scale``, clipped at 100 as in CLIP), are trained with the
symmetric cross-entropy: each image must pick its caption among the batch's, and each caption its
image. Captions identical to a pair's own count as its matches too (templated or short captions
repeat within a batch; calling them negatives would teach the model to tell apart what cannot be).
The text encoder and both projections are the run's ``pretext`` modules, saved and resumed with it.

Evaluation embeds the whole split (a gallery for retrieval: memory grows with the split, N x
``embed_dim`` floats per modality), and reports recall@k both ways: the share of images whose k
most similar captions include a match (``i2t_recall_k``), and of captions whose k most similar
images include one (``t2i_recall_k``). With class labels (``data.label_column``), the same with
any item of the query's class as a match (``i2t_class_recall_k``: the looser read-out when captions
vary in wording), and the finished model is also scored by **zero-shot classification**: each class name is put in the ``prompts``
(``"a handwritten {}"``), the prompts' embeddings averaged per class (CLIP's prompt ensembling),
and each test image takes the class whose embedding is nearest, without any training on labels.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..core.config import TaskConfig, validate_section
from ..core.errors import ConfigError
from ..core.sections import figure_html, html_table, pyplot, register_section, show_image
from . import StepOutput, Task, register_task
from .pretext import feature_size, predict_error

__all__ = ["Clip", "ClipConfig", "clip_loss", "RetrievalEvaluator", "recall_at"]

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clips the learned temperature so that logits stay below 100


class ClipConfig(TaskConfig):
    """``task: {name: clip, text: {family: transformer, ...}, embed_dim: 64, prompts: [...]}``."""

    text: dict[str, Any] = Field(default_factory=lambda: {"family": "transformer", "width": 64, "heads": 4,
                                                          "layers": 2, "pooling": "mean"},
                                 description="the text encoder: a model section of any family that reads tokens "
                                             "(max_len defaults to data.max_length)")
    embed_dim: int = Field(64, ge=1, description="size of the joint embedding space")
    temperature: float = Field(0.07, gt=0, description="initial softmax temperature (learned as logit_scale)")
    prompts: list[str] = Field(default_factory=lambda: ["{}"], min_length=1,
                               description="zero-shot: templates a class name fills ('a photo of a {}'); their "
                                           "embeddings are averaged per class")
    recall_at: list[int] = Field(default_factory=lambda: [1, 5], min_length=1, description="k of the recall@k scores")


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
              same_caption: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric cross-entropy of unit embeddings (N, d) each: image i against every caption, caption i
    against every image. ``same_caption`` (N, N) bool: pairs whose captions are identical, all matches
    (each row's target spread evenly over them); None: the diagonal alone."""
    logits = logit_scale.exp() * image.float() @ text.float().T  # (N, N): image i vs caption j
    n = len(image)
    matches = same_caption if same_caption is not None else torch.eye(n, dtype=torch.bool, device=image.device)
    targets = matches.float() / matches.float().sum(1, keepdim=True)
    # identical captions are a symmetric relation: the same targets serve the caption-to-image direction
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def recall_at(similarity: torch.Tensor, matches: torch.Tensor, k: int) -> float:
    """Share of queries (rows) whose ``k`` most similar items (columns) include a match."""
    top = similarity.topk(min(k, similarity.shape[1]), dim=1).indices
    return float(matches.gather(1, top).any(1).float().mean())


class RetrievalEvaluator:
    """Keeps each sample's image and caption embeddings and caption ids (the gallery), then scores
    recall@k both ways over the whole split."""

    def __init__(self, ks: list[int], dim: int):
        self.ks, self.dim = ks, dim
        self.images: list[torch.Tensor] = []
        self.texts: list[torch.Tensor] = []
        self.captions: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def update(self, outputs: torch.Tensor, y: torch.Tensor, x=None) -> None:
        self.images.append(outputs[:, : self.dim].float().cpu())
        self.texts.append(outputs[:, self.dim:].float().cpu())
        self.captions.append(y[:, 1:].cpu())
        self.labels.append(y[:, 0].cpu())

    def compute(self, class_names=None):
        from .evaluation import EvalResult

        if not self.images:
            return EvalResult({}, {})
        images, texts, captions = torch.cat(self.images), torch.cat(self.texts), torch.cat(self.captions)
        matches = _same_rows(captions)
        similarity = images @ texts.T
        metrics = {}
        for k in self.ks:
            metrics[f"i2t_recall_{k}"] = recall_at(similarity, matches, k)
            metrics[f"t2i_recall_{k}"] = recall_at(similarity.T, matches.T, k)
        metrics["recall"] = (metrics[f"i2t_recall_{self.ks[0]}"] + metrics[f"t2i_recall_{self.ks[0]}"]) / 2
        labels = torch.cat(self.labels)
        if bool((labels >= 0).all()):  # with class labels: a retrieved item of the query's class counts too
            same_class = labels.unsqueeze(0) == labels.unsqueeze(1)
            for k in self.ks:
                metrics[f"i2t_class_recall_{k}"] = recall_at(similarity, same_class, k)
                metrics[f"t2i_class_recall_{k}"] = recall_at(similarity.T, same_class, k)
        chance = float(matches.float().mean())
        return EvalResult(metrics, {"pairs": len(images), "chance_recall_1": chance})


def _same_rows(ids: torch.Tensor) -> torch.Tensor:
    """(N, N) bool: whether two rows of caption ids are identical."""
    _, inverse = torch.unique(ids, dim=0, return_inverse=True)
    return inverse.unsqueeze(0) == inverse.unsqueeze(1)


@register_task("clip")
class Clip(Task):
    target = "caption"
    predicts_target = False
    embeds = True
    main_metric = "recall"
    greater_is_better = {"recall": True, "zero_shot_accuracy": True,
                         **{f"{d}_{kind}_{k}": True for d in ("i2t", "t2i") for kind in ("recall", "class_recall")
                            for k in range(1, 11)}}
    Config = ClipConfig

    def __init__(self, spec, train_cfg, preprocessing, train_labels=None, config=None):
        super().__init__(spec, train_cfg, preprocessing, train_labels, config)
        from ..data.spec import DataSpec
        from ..models import FAMILIES

        self.tokenizer = getattr(preprocessing, "captions", None)
        if self.tokenizer is None:
            raise ConfigError("task clip: learns from image-caption pairs; use data.source: pairs")
        raw = dict(self.config.text)
        family = raw.get("family")
        if family not in FAMILIES.names():
            raise ConfigError(f"task.text.family: {family!r} is not a model family; the text encoder reads tokens "
                              f"with e.g. family: transformer")
        schema = FAMILIES.get(family).Config
        if "max_len" in schema.model_fields and "max_len" not in raw:
            raw["max_len"] = self.tokenizer.max_length
        self.text_config = validate_section(schema, raw, "task.text")
        self.text_spec = DataSpec(kind="tokens", input_shape=(self.tokenizer.max_length,), target="class",
                                  num_classes=2, class_names=["-", "+"], vocab_size=int(spec.vocab_size))

    def check_model(self, model) -> None:
        if not callable(getattr(model, "forward_features", None)):
            raise ConfigError(f"task clip: embeds images with the model's forward_features; "
                              f"{type(model).__name__} has none")

    def extend_model(self, model) -> None:
        from ..models import build_model

        text = build_model(self.text_config, self.text_spec)
        d = self.config.embed_dim
        pretext = nn.Module()
        pretext.text_encoder = text
        pretext.image_projection = nn.Linear(feature_size(model), d, bias=False)
        pretext.text_projection = nn.Linear(feature_size(text), d, bias=False)
        pretext.logit_scale = nn.Parameter(torch.tensor(math.log(1 / self.config.temperature)))
        model.pretext = pretext

    # -- embeddings -----------------------------------------------------------------------------
    def embed_images(self, model, x: torch.Tensor) -> torch.Tensor:
        """Normalised images -> unit embeddings (B, embed_dim)."""
        return F.normalize(model.pretext.image_projection(model.forward_features(x).flatten(1)).float(), dim=1)

    def embed_ids(self, model, ids: torch.Tensor) -> torch.Tensor:
        """Caption token ids (B, max_length) -> unit embeddings (B, embed_dim)."""
        text = model.pretext.text_encoder
        return F.normalize(model.pretext.text_projection(text.forward_features(ids).flatten(1)).float(), dim=1)

    def embed_texts(self, model, texts: list[str]) -> torch.Tensor:
        device = next(model.parameters()).device
        return self.embed_ids(model, self.tokenizer.encode_padded(texts).to(device))

    def embed(self, model, x: torch.Tensor) -> torch.Tensor:
        """What `layerwise embed` writes for images: their joint-space embedding."""
        return self.embed_images(model, x)

    # -- the loop's steps ---------------------------------------------------------------------
    def _pairs(self, model, batch):
        x, y = batch
        ids = y[:, 1:]
        image, text = self.embed_images(model, x), self.embed_ids(model, ids)
        scale = model.pretext.logit_scale.clamp(max=MAX_LOGIT_SCALE)
        return clip_loss(image, text, scale, _same_rows(ids)), image, text

    def training_step(self, model, batch, ctx) -> StepOutput:
        loss, image, text = self._pairs(model, batch)
        with torch.no_grad():  # the batch's image-to-caption hits, a cheap training curve
            hits = (image @ text.T).argmax(1) == torch.arange(len(image), device=image.device)
        return StepOutput(loss, len(image), None, {"batch_i2t_accuracy": hits.float().sum()})

    def evaluation_step(self, model, batch) -> StepOutput:
        loss, image, text = self._pairs(model, batch)
        return StepOutput(loss, len(image), torch.cat([image, text], dim=1))

    def predict(self, outputs):
        raise predict_error("clip")

    def evaluator(self, eval_cfg):
        return RetrievalEvaluator(self.config.recall_at, self.config.embed_dim)

    @torch.no_grad()
    def class_embeddings(self, model) -> torch.Tensor:
        """(classes, embed_dim): each class name in every prompt, embedded and averaged, unit length."""
        names = [str(n) for n in self.spec.class_names]
        per_prompt = torch.stack([self.embed_texts(model, [p.format(n) for n in names]) for p in self.config.prompts])
        return F.normalize(per_prompt.mean(0), dim=1)

    @torch.no_grad()
    def final_metrics(self, model, loader, eval_cfg) -> dict[str, float]:
        """Zero-shot classification accuracy from the prompts (with class labels only)."""
        if not self.spec.class_names:
            return {}
        classes = self.class_embeddings(model)
        right = seen = 0
        for x, y in loader:
            labels = y[:, 0]
            known = labels >= 0
            predicted = (self.embed_images(model, x) @ classes.T).argmax(1)
            right += int((predicted == labels)[known].sum())
            seen += int(known.sum())
        return {"zero_shot_accuracy": right / seen} if seen else {}


@register_section("retrieval")
def retrieval_section(run) -> tuple[str, str] | None:
    """The report's "Image–text retrieval": recall@k, zero-shot accuracy, and retrieved images."""
    if run.config.task != "clip":
        return None
    metrics = run.metrics.get("metrics", {})
    ks = run.config.task_options.recall_at
    rows = [{"direction": name, **{f"recall@{k}": metrics.get(f"{key}_recall_{k}") for k in ks},
             **({f"class recall@{k}": metrics.get(f"{key}_class_recall_{k}") for k in ks}
                if f"{key}_class_recall_{ks[0]}" in metrics else {})}
            for name, key in (("image → text", "i2t"), ("text → image", "t2i"))]
    chance = run.metrics.get("details", {}).get("chance_recall_1")
    parts = [html_table(rows)]
    if "zero_shot_accuracy" in metrics:
        parts.append(f"<p>Zero-shot classification from the prompts {run.config.task_options.prompts}: accuracy "
                     f"{metrics['zero_shot_accuracy']:.3f} (chance {1 / len(run.spec.class_names):.3f}).</p>")
    if chance is not None:
        parts.append(f"<p>A match is a caption identical to the pair's own (class recall: any item of the query's "
                     f"class); a random ranking finds an identical caption at rank 1 for {chance:.3f} of queries.</p>")
    figure = _retrieved_images(run)
    if figure:
        parts.append(figure)
    return "Image–text retrieval", "\n".join(parts)


@torch.no_grad()
def _retrieved_images(run, queries: int = 5, k: int = 5) -> str | None:
    split = getattr(run.data, run.metrics.get("split", "test"), None)
    if split is None or len(split) < k:
        return None
    task, model = run.task, run.model.cpu().eval()
    x = run.preprocessing.inputs.batch(split.x)
    images = task.embed_images(model, x)
    ids = split.y[:, 1:]
    _, first = np.unique(ids.numpy(), axis=0, return_index=True)
    chosen = sorted(first.tolist())[:queries]  # distinct captions, in the split's order
    texts = task.embed_ids(model, ids[chosen])
    top = (texts @ images.T).topk(k, dim=1).indices
    pixels = run.preprocessing.inputs.denormalize_pixels(x)
    plt = pyplot()
    fig, axes = plt.subplots(len(chosen), k, figsize=(1.1 * k + 2.5, 1.15 * len(chosen)), squeeze=False)
    for row, (query, found) in enumerate(zip(chosen, top)):
        caption = task.tokenizer.decode(ids[query].tolist())
        for col, index in enumerate(found.tolist()):
            ax = axes[row][col]
            show_image(ax, pixels[index])
            ax.axis("on")  # for the frame and the caption beside the row
            ax.set_xticks([])
            ax.set_yticks([])
            match = bool((ids[index] == ids[query]).all())
            for spine in ax.spines.values():
                spine.set_visible(match)
                spine.set_color("tab:green")
                spine.set_linewidth(3)
        axes[row][0].set_ylabel(caption, rotation=0, ha="right", va="center", fontsize=8, labelpad=8)
    return figure_html(fig, "test captions (left) and the five images the model finds most similar; a green frame: "
                            "the image's own caption is identical")
