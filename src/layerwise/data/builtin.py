"""Data sets that ship with scikit-learn: no download, so the default path works offline."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from ..config import DataConfig
from . import DataSource, register_source
from .spec import RawData

BUILTINS = {
    # name: (loader, input kind, target)
    "digits": ("load_digits", "image", "class"),
    "iris": ("load_iris", "tabular", "class"),
    "wine": ("load_wine", "tabular", "class"),
    "breast_cancer": ("load_breast_cancer", "tabular", "class"),
    "diabetes": ("load_diabetes", "tabular", "numeric"),
}


class BuiltinConfig(DataConfig):
    source: Literal["builtin"] = "builtin"
    name: Literal["digits", "iris", "wine", "breast_cancer", "diabetes"] = Field(
        "digits", description="a data set bundled with scikit-learn"
    )


@register_source("builtin")
class BuiltinSource(DataSource):
    """digits (8x8 images), iris, wine, breast_cancer (tabular classes), diabetes (regression)."""

    Config = BuiltinConfig
    description = "data sets bundled with scikit-learn: digits, iris, wine, breast_cancer, diabetes"

    def read(self, cfg: BuiltinConfig, task: str | None) -> RawData:
        import pandas as pd
        import sklearn.datasets

        loader, kind, target = BUILTINS[cfg.name]
        bunch = getattr(sklearn.datasets, loader)()
        if kind == "image":
            # digits are 0..16 intensities; store as uint8 pixels like any other image
            pixels = np.round(bunch.images * (255 / 16)).clip(0, 255).astype(np.uint8)[:, None]
            return RawData("image", pixels, bunch.target, target=target,
                           class_names=[str(n) for n in bunch.target_names], origin=f"builtin:{cfg.name}")
        frame = pd.DataFrame(bunch.data, columns=list(bunch.feature_names))
        names = [str(n) for n in bunch.target_names] if target == "class" else None
        return RawData("tabular", frame, bunch.target, target=target, class_names=names,
                       target_names=None if names else ["target"], origin=f"builtin:{cfg.name}")
