"""Image–text pairs: a CSV with an image path and a caption per row (and optionally a class label), for
image–text contrastive learning (``task: clip``).

``path`` is the CSV; image paths in it are relative to ``images`` (by default the CSV's folder), so
"an image folder plus a captions file" is the same thing with ``images`` set. Every listed image
must exist: a missing one is a one-line error naming how many, the first row and the folder, before
anything is decoded. The rows are split like any source (stratified by ``label_column`` when there
is one); pixel statistics and the caption tokenizer (characters or byte-level BPE, as for ``text``)
are fitted on the training rows only.

A split's ``x`` holds the uint8 images (N, C, H, W), its ``y`` (N, 1 + max_length) long: the class
index in column 0 (-1 without a label column), then the caption's token ids, left-padded. The spec's
target is ``caption``: only image–text tasks read it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from ..core.errors import DataError
from . import DataSource, register_source, where
from .images import ImageFilesConfig
from .spec import DataBundle, DataSpec, Split

__all__ = ["PairsConfig", "PairsSource", "NO_LABEL"]

NO_LABEL = -1


class PairsConfig(ImageFilesConfig):
    source: Literal["pairs"] = "pairs"
    path: str = Field(..., description="CSV with an image path and a caption per row")
    images: str | None = Field(None, description="folder the image paths are relative to (default: the CSV's folder)")
    image_column: str = Field("image", description="column of image paths")
    caption_column: str = Field("caption", description="column of captions")
    label_column: str | None = Field(None, description="optional column of class labels: zero-shot accuracy and "
                                     "stratified splits")
    tokenizer: Literal["char", "bpe"] = Field("char", description="caption tokens: characters, or byte-level BPE")
    vocab_size: int = Field(512, ge=257, description="bpe: vocabulary size (256 bytes + <pad> + merges)")
    max_length: int = Field(32, ge=1, description="caption tokens kept (left-padded; longer captions keep their start)")
    lowercase: bool = Field(False, description="lowercase captions before tokenizing")


@register_source("pairs")
class PairsSource(DataSource):
    Config = PairsConfig
    description = "a CSV of image paths and captions (image–text contrastive learning)"

    def load(self, cfg: PairsConfig, task: str | None) -> DataBundle:
        from .images import load_images
        from .kinds.image import fit_pixels
        from .pipeline import split_rows
        from .preprocess import Preprocessing
        from .tabular import read_table
        from .text import TextPreprocessor

        path = Path(cfg.path).expanduser()
        if not path.is_file():
            raise DataError(f"data.path: file not found: {where(path)}; give a CSV with columns "
                            f"{cfg.image_column} and {cfg.caption_column}")
        frame = read_table(path, ",")
        wanted = [cfg.image_column, cfg.caption_column] + ([cfg.label_column] if cfg.label_column else [])
        missing = [c for c in wanted if c not in frame.columns]
        if missing:
            raise DataError(f"{path}: no column '{missing[0]}'; its columns are {', '.join(map(str, frame.columns))}; "
                            f"set data.{_key(cfg, missing[0])}")
        if not len(frame):
            raise DataError(f"{path}: no rows; add image-caption pairs")
        root = Path(cfg.images).expanduser() if cfg.images else path.parent
        files = [root / str(p) for p in frame[cfg.image_column].tolist()]
        absent = [i for i, f in enumerate(files) if not f.is_file()]
        if absent:
            first = absent[0]
            raise DataError(f"{path}: {len(absent)} of {len(files)} images are missing (first: row {first + 2}, "
                            f"'{frame[cfg.image_column].iloc[first]}' in {root}); fix the paths or set data.images "
                            f"to the folder they are relative to")
        captions = [str(c) if c == c else "" for c in frame[cfg.caption_column].tolist()]  # NaN: an empty caption
        labels = np.array([str(v) for v in frame[cfg.label_column].tolist()]) if cfg.label_column else None

        y_split = labels if labels is not None else np.zeros(len(frame))
        train_idx, val_idx, test_idx = split_rows(y_split, "class" if labels is not None else "numeric", cfg)
        pixels = load_images(files, cfg.size, cfg.channels)
        fitted = fit_pixels(pixels, train_idx, cfg)
        tokenizer = TextPreprocessor(cfg.tokenizer, cfg.lowercase, cfg.vocab_size, max_length=cfg.max_length)
        tokenizer.fit("\n".join(captions[i] for i in train_idx))
        classes = sorted(set(labels[train_idx].tolist())) if labels is not None else None
        if labels is not None:
            unseen = sorted(set(labels.tolist()) - set(classes))
            if unseen:
                raise DataError(f"{path}: label(s) {', '.join(unseen[:5])} appear only outside the training split; "
                                f"add training pairs of them or drop those rows")
        codes = np.array([classes.index(v) for v in labels.tolist()]) if labels is not None \
            else np.full(len(frame), NO_LABEL)
        ids = tokenizer.encode_padded(captions)  # (N, max_length) long

        def split(rows) -> Split | None:
            if rows is None or not len(rows):
                return None
            index = torch.as_tensor(np.asarray(rows))
            y = torch.cat([torch.as_tensor(codes)[index].unsqueeze(1).long(), ids[index]], dim=1)
            return Split(torch.as_tensor(pixels)[index], y)

        spec = DataSpec(kind="image", input_shape=tuple(int(s) for s in fitted.input_shape), target="caption",
                        num_classes=len(classes) if classes else None, class_names=classes,
                        vocab_size=tokenizer.vocab_size)
        preprocessing = Preprocessing(fitted.preprocessor, "caption", classes, captions=tokenizer)
        return DataBundle(spec, split(train_idx), split(val_idx), split(test_idx), preprocessing)


def _key(cfg: PairsConfig, column: str) -> str:
    for key in ("image_column", "caption_column", "label_column"):
        if getattr(cfg, key) == column:
            return key
    return "image_column"
