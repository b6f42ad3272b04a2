"""A folder of images with one sub-folder per class (PNG/JPEG, read with Pillow)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from ..core.config import DataConfig
from ..core.errors import DataError
from . import DataSource, register_source, where
from .spec import RawData

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class ImageFilesConfig(DataConfig):
    """Keys of every source that reads image files (an image folder, image-caption pairs)."""

    image_size: tuple[int, int] | int = Field(32, description="resize every image to this (height, width)")
    channels: Literal["auto", 1, 3] = Field("auto", description="1 (grayscale), 3 (RGB), or auto from the first image")

    @model_validator(mode="after")
    def _positive_size(self) -> ImageFilesConfig:
        sizes = (self.image_size,) if isinstance(self.image_size, int) else self.image_size
        if min(sizes) < 1:
            raise ValueError(f"data.image_size: sizes must be at least 1 pixel; received {self.image_size!r}; "
                             f"give a size such as 32 or [32, 32]")
        return self

    @property
    def size(self) -> tuple[int, int]:
        """``image_size`` as (height, width)."""
        return (self.image_size, self.image_size) if isinstance(self.image_size, int) else tuple(self.image_size)


class ImageFolderConfig(ImageFilesConfig):
    source: Literal["image_folder"] = "image_folder"
    path: str = Field(..., description="folder with one sub-folder of images per class")


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class ImageTooLarge(DataError):
    """An image declares more pixels than allowed: a decompression bomb, or just too big to decode.

    ``pixels``: how many it declares (None when Pillow refused it before its size could be read)."""

    def __init__(self, message: str, pixels: int | None = None):
        super().__init__(message)
        self.pixels = pixels


def _declared_pixels(exc: Exception) -> int | None:
    """The pixel count in Pillow's DecompressionBombError message ("Image size (900000000 pixels) ...")."""
    import re

    found = re.search(r"\((\d+) pixels\)", str(exc))
    return int(found.group(1)) if found else None


def load_images(files: list[Path], size: tuple[int, int], channels: int | str,
                max_pixels: int | None = None) -> np.ndarray:
    """Decode, convert and resize images into one uint8 array (N, C, H, W).

    ``max_pixels``: an image whose header declares more (width x height) raises ImageTooLarge before
    any pixel is decoded; so does one over Pillow's own decompression-bomb limit (about 179 million).
    """
    from PIL import Image, UnidentifiedImageError

    mode = None if channels == "auto" else ("L" if channels == 1 else "RGB")
    out = []
    for path in files:
        try:
            with Image.open(path) as img:
                width, height = img.size  # from the header: nothing is decoded yet
                if max_pixels is not None and width * height > max_pixels:
                    raise ImageTooLarge(f"{path}: {width}x{height} pixels ({width * height:,}), more than the "
                                        f"limit of {max_pixels:,} (max_pixels)", width * height)
                if mode is None:
                    mode = "L" if img.mode in {"L", "1", "I;16", "I", "LA"} else "RGB"
                img = img.convert(mode).resize((size[1], size[0]), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
        except Image.DecompressionBombError as exc:
            pixels = _declared_pixels(exc)
            raise ImageTooLarge(f"{path}: {f'{pixels:,} pixels, ' if pixels else ''}over Pillow's decompression-bomb "
                                f"limit of {2 * Image.MAX_IMAGE_PIXELS:,}", pixels) from None
        except ImageTooLarge:
            raise
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable image ({type(exc).__name__}); remove or replace it") from None
        out.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    return np.stack(out) if out else np.zeros((0, 1, *size), dtype=np.uint8)


@register_source("image_folder")
class ImageFolderSource(DataSource):
    """root/class_a/*.png, root/class_b/*.jpg ...: the sub-folder names are the classes."""

    Config = ImageFolderConfig
    description = "one sub-folder of PNG/JPEG images per class, resized"

    def read(self, cfg: ImageFolderConfig, task: str | None) -> RawData:
        root = Path(cfg.path).expanduser()
        if not root.is_dir():
            raise DataError(f"data.path: folder not found: {where(root)}; point it at a folder with one sub-folder per class")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if len(classes) < 2:
            raise DataError(f"{root}: found {len(classes)} class sub-folder(s); an image folder needs one sub-folder per class, at least two")
        files, labels = [], []
        for name in classes:
            found = image_files(root / name)
            if not found:
                raise DataError(f"{root / name}: class folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            files += found
            # the folder names are the label values, so new folders of the same classes map back to them
            labels += [name] * len(found)
        pixels = load_images(files, cfg.size, cfg.channels)
        return RawData("image", pixels, np.array(labels), target="class", origin=str(root))
