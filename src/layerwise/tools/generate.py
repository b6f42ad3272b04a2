"""`layerwise generate`: text from a language model run (through ``ops.decoding``), or samples from a
trained generative run: the prior of a VAE (Kingma & Welling 2014), the generator of
a GAN (Goodfellow et al. 2014; DCGAN, Radford et al. 2016) or the reverse process of a diffusion model
(DDIM, Song, Meng & Ermon 2021; classifier-free guidance, Ho & Salimans 2021).

:func:`sample_run` draws ``n`` samples and returns them twice: in the model's normalised input space
(what a classifier of the same data reads) and in the stored form a user recognises (uint8 images;
for tables the encoded feature matrix, which :meth:`Samples.to_frame` turns back into the original
columns). :func:`write_samples` writes an image grid (``.png``), one PNG per sample (a folder) or a
CSV with the original column names (tabular runs).

What cannot be inverted in a table: imputed missing values (a sample never "is missing") and the
original column order (numeric columns first, then categorical ones, unless ``data.features``
listed the order). Columns of whole numbers come back as integers, clipped to their training range.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import ConfigError, RunError
from ..data.kinds import input_kind
from ..models import FAMILIES
from ..models.abilities import LatentEncoder, Sampler, families_with, has_ability
from ..ops.decoding import generate_ids, start_ids
from ..runs.tools import ToolOptions, option, register_tool

__all__ = ["SAMPLER_REVISION", "Samples", "can_sample", "generate", "generate_text", "resolve_labels", "sample_many",
           "sample_run", "write_samples"]

# bumped whenever the same weights and seed would give other samples (2: diffusion clips x0), so
# that caches of samples (the synthetic data source) are rebuilt rather than reused
SAMPLER_REVISION = 2
CELL = 32  # an image grid draws each sample at least this many pixels tall (8x8 digits: 4x, nearest)
PAD = 2  # pixels between cells
LABEL_WIDTH = 64  # room for a class name left of each row of a conditional grid


@dataclass
class Samples:
    """``n`` generated samples. ``x``: (n, *input_shape) in the model's normalised input space;
    ``stored``: uint8 (n, C, H, W) images or the (n, F) encoded feature matrix of a table;
    ``labels``: the class id of each sample (conditional models) or None."""

    x: torch.Tensor
    stored: np.ndarray
    labels: np.ndarray | None
    kind: str  # the run's input kind: "image" | "tabular"
    class_names: list[str] | None = None
    preprocessor: Any = None  # the run's TabularPreprocessor (tables)
    target: str | None = None  # the run's target column (tables)
    feature_order: list[str] | None = None
    files: list[Path] = field(default_factory=list)  # what write_samples wrote

    def __len__(self) -> int:
        return len(self.stored)

    @property
    def pictures(self) -> bool:
        """Whether the samples are pictures (uint8 images), rather than rows of a table."""
        return input_kind(self.kind).picture

    def as_inputs(self):
        """The samples as ``Run.predict`` reads them: the uint8 pictures, or the table as a DataFrame."""
        return self.stored if self.pictures else self.to_frame()

    def to_frame(self):
        """Tabular samples as a DataFrame with the original column names and category labels."""
        import pandas as pd

        if not input_kind(self.kind).columns:
            raise RunError("to_frame: only tabular samples become a table; write images with write_samples")
        pre, enc = self.preprocessor, self.stored
        # numbers unscaled, dates rebuilt from their parts, the most likely *known* level of each
        # category (the training set never fills the unknown level)
        columns: dict[str, Any] = pre.decode(enc)
        for col, (low, high) in getattr(pre, "integer_", {}).items():  # whole numbers: integers in the training range
            columns[col] = np.clip(np.rint(columns[col]), low, high).astype(np.int64)
        order = [c for c in (self.feature_order or []) if c in columns]
        frame = pd.DataFrame({c: columns[c] for c in order + [c for c in columns if c not in order]})
        if self.labels is not None and self.target:
            frame[self.target] = [self.class_names[i] if self.class_names else int(i) for i in self.labels]
        return frame


def _family(run) -> str:
    return run.config.model.family


def can_sample(run) -> bool:
    """Whether a run's family draws samples (the Sampler ability), known without loading its weights."""
    return has_ability(FAMILIES.get(_family(run)), Sampler)


def _num_classes(run) -> int:
    """Classes the model can be conditioned on (0: unconditional)."""
    return run.model.sample_classes


def resolve_labels(run, labels: Any, n: int) -> np.ndarray | None:
    """Class names or ids (one, or one per sample) -> ids; None -> every class in turn, in blocks
    (conditional models) or None (unconditional)."""
    classes = _num_classes(run)
    if labels is None:
        # blocks of each class, so a grid shows one class per row
        return (np.arange(n) * classes // n).astype(np.int64) if classes else None
    if not classes:
        raise ConfigError(f"--class: this {_family(run)} run is unconditional and cannot generate a chosen class; "
                          f"train it with model.conditional: true" if _family(run) != "vae" else
                          "--class: a vae is unconditional and cannot generate a chosen class; use a conditional "
                          "gan or diffusion run")
    names = [str(c) for c in (run.preprocessing.classes or run.spec.class_names or range(classes))]
    values = list(labels) if isinstance(labels, (list, tuple, np.ndarray, torch.Tensor)) else [labels]
    ids = []
    for value in values:
        value = value.item() if hasattr(value, "item") else value
        key = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
        if key in names:
            ids.append(names.index(key))
        elif key.lstrip("-").isdigit() and 0 <= int(key) < classes:
            ids.append(int(key))
        else:
            shown = ", ".join(names[:12]) + ("..." if len(names) > 12 else "")
            raise ConfigError(f"--class: unknown class {value!r}; this run's classes are {shown}")
    if len(ids) == 1:
        return np.full(n, ids[0], dtype=np.int64)
    if len(ids) != n:
        raise ConfigError(f"--class: give one class or {n} (one per sample); received {len(ids)}")
    return np.asarray(ids, dtype=np.int64)


@torch.no_grad()
def sample_run(run, n: int, labels: Any = None, steps: int | None = None, guidance: float = 0.0,
               seed: int = 0, *, label_ids: np.ndarray | None = None) -> Samples:
    """Draw ``n`` samples from a vae, gan or diffusion run; same ``seed``, same samples.

    ``labels``: a class name or id, or one per sample (conditional gan / diffusion runs; default:
    every class in turn). ``steps`` and ``guidance``: DDIM steps and the classifier-free guidance
    weight (diffusion runs only).

    ``label_ids``: class ids (indices into the run's classes) one per sample, instead of ``labels``.

    >>> samples = sample_run(load_run("runs/gan-digits"), 16, labels=3)   # doctest: +SKIP
    """
    model = run.model.cpu().eval()  # on the CPU: the same seed gives the same samples on any machine
    if not has_ability(model, Sampler):
        hint = ("a plain autoencoder has no prior to sample; train model.family: vae (or gan, diffusion) to generate"
                if has_ability(model, LatentEncoder) else
                f"generate draws samples from {', '.join(families_with(Sampler))} runs (and text from language "
                f"models); this run's task is {run.config.task}")
        raise RunError(f"{run.path}: {hint}")
    if n < 1:
        raise ConfigError(f"--n: the number of samples must be at least 1; received {n}")
    for flag, name, value in (("--steps", "steps", steps), ("--guidance", "guidance", guidance or None)):
        if value is not None and name not in model.sample_options:
            takes = [f for f in families_with(Sampler) if name in getattr(FAMILIES.get(f), "sample_options", ())]
            raise ConfigError(f"{flag}: only {', '.join(takes)} runs take it; drop it for this {_family(run)} run")
    ids = resolve_labels(run, labels, n) if label_ids is None else np.asarray(label_ids, dtype=np.int64)
    if guidance and ids is None:
        raise ConfigError("--guidance: classifier-free guidance needs a conditional run (model.conditional: true); "
                          "use --guidance 0")
    generator = torch.Generator().manual_seed(seed)
    pre = run.preprocessing.inputs
    image = input_kind(run.spec).picture  # pictures go back to uint8 pixels, a table's rows stay encoded
    options = {"steps": steps, "guidance": guidance or None}
    if image and "clip" in model.sample_options:  # x0 estimates stay within the pixel range [0, 1], in model units
        blank = torch.zeros(1, *run.spec.input_shape)
        options["clip"] = (pre.normalize_pixels(blank)[0], pre.normalize_pixels(blank + 1)[0])
    x = model.sample(n, labels=None if ids is None else torch.from_numpy(ids), generator=generator,
                     **{k: v for k, v in options.items() if v is not None})
    if model.sample_units == "pixels":  # e.g. a Bernoulli VAE's intensities: back to the model's input space
        x = pre.normalize_pixels(x.clamp(0, 1))
    x = x.float()
    if image:
        stored = (pre.denormalize_pixels(x).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    else:
        stored = x.reshape(n, -1).numpy().astype(np.float32)
    features = getattr(run.config.data, "features", None)
    target = getattr(run.config.data, "target", None)
    return Samples(x=x, stored=stored, labels=ids, kind=run.spec.kind,
                   class_names=[str(c) for c in run.preprocessing.classes] if run.preprocessing.classes else None,
                   preprocessor=None if image else pre, target=target if isinstance(target, str) else None,
                   feature_order=list(features) if features else None)


def sample_many(run, n: int, labels: Any = None, steps: int | None = None, guidance: float = 0.0,
                seed: int = 0, chunk: int = 500) -> Samples:
    """:func:`sample_run` for many samples, ``chunk`` at a time, so memory stays bounded (a diffusion
    U-Net holds every sample's activations at each step). Conditional runs without ``labels`` get
    every class equally often. Chunk ``i`` uses seed ``seed + i``: same arguments, same samples."""
    ids = resolve_labels(run, labels, n)
    parts = []
    for i, start in enumerate(range(0, n, chunk)):
        size = min(chunk, n - start)
        part_ids = None if ids is None else ids[start:start + size]
        parts.append(sample_run(run, size, steps=steps, guidance=guidance, seed=seed + i, label_ids=part_ids))
    first = parts[0]
    return Samples(x=torch.cat([p.x for p in parts]), stored=np.concatenate([p.stored for p in parts]),
                   labels=ids, kind=first.kind, class_names=first.class_names, preprocessor=first.preprocessor,
                   target=first.target, feature_order=first.feature_order)


def _to_pil(img: np.ndarray, scale: int = 1):
    """uint8 (C, H, W) -> a PIL image (grey for 1 channel, RGB for 3), enlarged ``scale`` times."""
    from PIL import Image

    pic = Image.fromarray(img[0]) if img.shape[0] != 3 else Image.fromarray(img.transpose(1, 2, 0))
    if scale > 1:  # nearest neighbour: the pixels stay crisp squares, not a blur
        pic = pic.resize((pic.width * scale, pic.height * scale), Image.NEAREST)
    return pic


def grid_layout(samples: Samples) -> tuple[list[list[int]], list[str] | None]:
    """Sample indices per grid row, and the row labels (class names) of a conditional grid."""
    n = len(samples)
    if samples.labels is None or len(set(samples.labels.tolist())) == 0:
        cols = math.ceil(math.sqrt(n))
        return [list(range(i, min(i + cols, n))) for i in range(0, n, cols)], None
    rows, names = [], []
    for cls in dict.fromkeys(samples.labels.tolist()):  # classes in order of first appearance
        rows.append([i for i in range(n) if samples.labels[i] == cls])
        names.append(samples.class_names[cls] if samples.class_names else str(cls))
    return rows, names


def image_grid(samples: Samples):
    """A PIL image: samples in rows (one row per class when conditional, names on the left)."""
    from PIL import Image, ImageDraw

    rows, names = grid_layout(samples)
    _, height, width = samples.stored.shape[1:]
    scale = max(1, math.ceil(CELL / min(height, width)))
    cell_h, cell_w = height * scale, width * scale
    cols = max(len(r) for r in rows)
    left = LABEL_WIDTH if names else 0
    grid = Image.new("RGB" if samples.stored.shape[1] == 3 else "L",
                     (left + PAD + cols * (cell_w + PAD), PAD + len(rows) * (cell_h + PAD)), color=255)
    draw = ImageDraw.Draw(grid)
    for r, row in enumerate(rows):
        y = PAD + r * (cell_h + PAD)
        if names:
            draw.text((4, y + cell_h // 2 - 5), names[r][:10], fill=0)
        for c, i in enumerate(row):
            grid.paste(_to_pil(samples.stored[i], scale), (left + PAD + c * (cell_w + PAD), y))
    return grid


def write_samples(samples: Samples, out: str | Path) -> list[Path]:
    """``out.png``: one image grid; ``out.csv``: a table (tabular runs); anything else: a folder of
    one PNG per sample (image runs). Returns the files written."""
    out = Path(out)
    suffix = out.suffix.lower()
    if input_kind(samples.kind).columns:
        if suffix != ".csv":
            raise ConfigError(f"--out: a tabular run writes its samples as a CSV; give a path ending in .csv "
                              f"(received {out})")
        out.parent.mkdir(parents=True, exist_ok=True)
        samples.to_frame().to_csv(out, index=False)
        files = [out]
    elif suffix == ".csv":
        raise ConfigError(f"--out: an image run writes a .png grid or a folder of PNG files; received {out}")
    elif suffix == ".png":
        out.parent.mkdir(parents=True, exist_ok=True)
        image_grid(samples).save(out)
        files = [out]
    elif suffix:
        raise ConfigError(f"--out: write a .png grid or a folder (a path without a suffix); received {out}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        files = []
        for i, img in enumerate(samples.stored):
            name = "" if samples.labels is None else (samples.class_names[samples.labels[i]] if samples.class_names
                                                      else str(samples.labels[i]))
            tag = "_" + re.sub(r"[^\w.-]+", "-", name) if name else ""  # a class name made safe for a file name
            path = out / f"sample_{i:04d}{tag}.png"
            _to_pil(img).save(path)  # native size: the file reads back as the model's input
            files.append(path)
    samples.files = files
    return files


def generate_text(run, prompt: str = "", tokens: int = 200, temperature: float = 1.0, top_k: int | None = None,
                  seed: int = 0) -> str:
    """The prompt followed by ``tokens`` generated tokens, decoded (``Run.generate`` and ``layerwise generate``)."""
    if run.config.task != "language_model":
        raise RunError(f"{run.path}: a {run.config.task} run cannot generate text; train one with task "
                       f"language_model (data source 'text')")
    tokenizer = run.preprocessing.inputs
    if not hasattr(tokenizer, "decode"):
        raise RunError(f"{run.path}: the run's data has no tokenizer to turn ids into text; train on data source 'text'")
    if temperature < 0:
        raise ConfigError(f"temperature: must be >= 0 (0 picks the most likely token); received {temperature}")
    generator = torch.Generator().manual_seed(seed)
    ids = generate_ids(run.model, start_ids(tokenizer, prompt), tokens, temperature, top_k, generator)
    return prompt + tokenizer.decode(ids)


class GenerateOptions(ToolOptions):
    prompt: str = option("", "text to continue (default: start from nothing)")
    tokens: int = option(200, "tokens to generate", ge=1)
    temperature: float = option(1.0, "sampling temperature; 0 picks the most likely token every time", ge=0.0)
    top_k: int | None = option(None, "sample among the K most likely tokens only", ge=1)
    seed: int = option(0, "random seed (same seed, same output)")
    n: int = option(64, "vae / gan / diffusion runs: how many samples", ge=1)
    labels: Any = option(None, "conditional gan / diffusion runs: the class to generate (name or id; Python: "
                         "also one per sample)", flag="--class")
    steps: int | None = option(None, "diffusion runs: DDIM sampling steps", ge=1)
    guidance: float = option(0.0, "diffusion runs: classifier-free guidance weight")
    out: Path | None = option(None, "vae / gan / diffusion runs: a .png grid, a folder (one PNG each) or a .csv "
                              "(tabular runs); default RUN/samples.png or RUN/samples.csv")


@register_tool("generate", GenerateOptions)
def generate(run, options: GenerateOptions):
    """Generate text from a language-model RUN, or samples from a vae, gan or diffusion RUN.

    Language-model runs: returns ``prompt`` and its continuation of ``tokens`` sampled tokens as
    text. Recurrent families carry their state and causal transformers a KV cache, so each new
    token costs one step, not a pass over everything before it.

    vae, gan and diffusion runs: returns ``n`` :class:`Samples` (``labels``: a class for conditional
    runs; ``steps``, ``guidance``: diffusion only), written to ``out`` (a .png grid, a folder of PNGs,
    or a .csv for tabular runs; default ``RUN/samples.png`` or ``RUN/samples.csv``)."""
    o = options
    if can_sample(run) or has_ability(FAMILIES.get(_family(run)), LatentEncoder):  # an autoencoder: told why not
        if o.prompt:
            raise ConfigError("--prompt: only language-model runs continue a prompt; drop it for this run")
        samples = sample_run(run, o.n, labels=o.labels, steps=o.steps, guidance=o.guidance, seed=o.seed)
        write_samples(samples, o.out or run.path / ("samples.png" if samples.pictures else "samples.csv"))
        return samples
    for flag, value in (("--class", o.labels), ("--steps", o.steps), ("--guidance", o.guidance or None),
                        ("--out", o.out)):
        if value is not None:
            raise ConfigError(f"{flag}: only vae, gan and diffusion runs take it; this run generates text")
    return generate_text(run, o.prompt, o.tokens, temperature=o.temperature, top_k=o.top_k, seed=o.seed)


@generate.printer
def _print(result, options: GenerateOptions) -> None:
    if isinstance(result, Samples):
        where = result.files[0] if len(result.files) == 1 else result.files[0].parent
        print(f"{len(result)} samples -> {where}")
    else:
        print(result)
