"""Text: a plain-text file, a folder of ``.txt`` files, or a CSV with a text column, as token ids.

Two tokenizers, both fitted on the training split only: characters (a vocabulary of the characters
seen in the training text, as in Karpathy's char-rnn and nanoGPT's shakespeare_char), and byte-level
BPE (Sennrich et al. 2016, "Neural Machine Translation of Rare Words with Subword Units", on bytes
as in GPT-2) trained with Hugging Face ``tokenizers``. Byte-level BPE starts from all 256 bytes, so
any text encodes without an unknown token and ``decode(encode(s)) == s``.

Interface (used by the language_model task and generation)
------------------------------------------------------------
``data: {source: text, path: FILE | FOLDER | CSV, tokenizer: char | bpe, ...}``

* A plain-text file or folder (or a CSV when ``task: language_model``) gives a language-model
  bundle: spec ``DataSpec(kind="tokens", input_shape=(block_size,), target="token",
  vocab_size=V)``; each split holds ``x`` and ``y``, both long (N, block_size), with
  ``y[:, t]`` the token after ``x[:, t]``. Blocks start every ``stride`` tokens (default
  ``block_size``: non-overlapping). The text is split chronologically by characters: train is the
  first ``1 - val_fraction - test_fraction`` of it, then val, then test (the end of the text).
* A CSV with a label column gives a classification (or regression) bundle through
  ``pipeline.build_bundle``: ``x`` long (N, max_length), left-padded with ``pad_id``, texts longer
  than ``max_length`` tokens keep their first ``max_length`` tokens.
* ``bundle.preprocessor.inputs`` (and ``run.preprocessing.inputs``) is a :class:`TextPreprocessor`:
  ``level`` ("char" | "bpe"), ``vocab_size``, ``encode(str) -> list[int]``,
  ``decode(list[int]) -> str`` (skips ``<pad>``; an unknown character decodes as U+FFFD),
  ``block_size``, ``stride``, ``max_length``, ``pad_id`` (0), ``unk_id`` (1 for char, None for
  bpe), ``to_dict()``/``from_dict()`` (the whole tokenizer inside), ``batch(x, train, seed)`` (x
  unchanged: ids stay long).
* :func:`read_text` reads a file or folder as one string; :func:`text_blocks` cuts a string into
  ``Split`` blocks with a fitted preprocessor (``Run.evaluate(data="other.txt")`` uses it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from ..core.config import DataConfig
from ..core.errors import DataError, require
from ..core.registry import did_you_mean
from . import DataSource, register_source, where
from .preprocess import register_preprocessor
from .spec import DataBundle, DataSpec, RawData, Split

__all__ = ["TABLE_SUFFIXES", "TextConfig", "TextPreprocessor", "TextSource", "read_text", "table_texts", "text_blocks"]

TABLE_SUFFIXES = {".csv", ".tsv", ".parquet", ".pq"}  # read as tables; any other file is plain text
BYTE_ALPHABET = 256
# tasks that read a text as blocks of tokens (no labels): next-token and masked-token prediction
BLOCK_TASKS = ("language_model", "masked_lm")
SPECIALS = ["<pad>", "<unk>"]  # char vocabulary: ids 0 and 1; BPE needs only <pad> (bytes cover everything)


class TextConfig(DataConfig):
    source: Literal["text"] = "text"
    path: str = Field(..., description="a text file, a folder of .txt files (with sub-folders, sorted by path, joined by "
                      "newlines), or a CSV/Parquet table with a text column")
    text_column: str = Field("text", description="table: the column holding the text")
    label_column: str = Field("label", description="table: the label column; present: text classification "
                              "(or regression), absent: set task: language_model to model the text")
    delimiter: str = Field(",", description="CSV field separator")
    tokenizer: Literal["char", "bpe"] = Field("char", description="char: one token per character; bpe: "
                                              "byte-level BPE trained on the training text")
    vocab_size: int = Field(512, ge=1, description="bpe: vocabulary size (256 bytes + <pad> + merges)")
    block_size: int = Field(128, ge=1, description="language model: tokens per training block (the context)")
    stride: int | None = Field(None, ge=1, description="language model: tokens between block starts "
                               "(default: block_size, non-overlapping)")
    max_length: int = Field(256, ge=1, description="classification: tokens per text (left-padded, longer "
                            "texts keep their first max_length tokens)")
    lowercase: bool = Field(False, description="lowercase the text before tokenizing")

    @model_validator(mode="after")
    def _bpe_vocabulary(self) -> TextConfig:
        if self.tokenizer == "bpe" and self.vocab_size < BYTE_ALPHABET + 1:
            raise ValueError(f"data.vocab_size: {self.vocab_size} is smaller than the byte alphabet; byte-level BPE "
                             f"needs at least {BYTE_ALPHABET + 1} (256 bytes + <pad>); raise it, e.g. to 512")
        return self


# -- the tokenizer ------------------------------------------------------------------------------


@register_preprocessor("text")
class TextPreprocessor:
    """Characters or byte-level BPE, fitted on training text; saved whole in the run's data.json.

    >>> pre = TextPreprocessor("char").fit("hello world")
    >>> pre.decode(pre.encode("hold")) == "hold"
    True
    """

    pad_id = 0

    def __init__(self, level: str = "char", lowercase: bool = False, bpe_vocab_size: int = 512,
                 block_size: int = 128, stride: int | None = None, max_length: int = 256):
        self.level = level
        self.lowercase = lowercase
        self.bpe_vocab_size = bpe_vocab_size  # the BPE target; vocab_size is what training reached
        self.block_size = block_size
        self.stride = stride or block_size
        self.max_length = max_length
        self.chars_: list[str] = []  # char level: id 2 + i is chars_[i]
        self._index: dict[str, int] = {}
        self._tokenizer = None  # bpe: a tokenizers.Tokenizer

    @classmethod
    def from_config(cls, cfg: TextConfig) -> TextPreprocessor:
        return cls(cfg.tokenizer, cfg.lowercase, cfg.vocab_size, cfg.block_size, cfg.stride, cfg.max_length)

    # -- fitting --------------------------------------------------------------------------------
    def fit(self, text: str | Sequence[str]) -> TextPreprocessor:
        """Learn the vocabulary from training text: one string, or several (one per sample)."""
        texts = [text] if isinstance(text, str) else list(text)
        texts = [self._normal(t) for t in texts]
        if self.level == "char":
            self.chars_ = sorted(set().union(*map(set, texts))) if texts else []
            self._index = {}
        else:
            tk = require("tokenizers", "text")
            self._tokenizer = _bpe_tokenizer(tk)
            trainer = tk.trainers.BpeTrainer(vocab_size=self.bpe_vocab_size, special_tokens=SPECIALS[:1],
                                             initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
                                             show_progress=False)
            # line by line: the pre-tokenizer splits at spaces anyway, and short pieces train in parallel
            self._tokenizer.train_from_iterator(_lines(texts), trainer)
        return self

    def _normal(self, text: str) -> str:
        return text.lower() if self.lowercase else text

    # -- the interface --------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        if self.level == "char":
            return len(SPECIALS) + len(self.chars_)
        return self._tokenizer.get_vocab_size() if self._tokenizer is not None else 0

    @property
    def unk_id(self) -> int | None:
        return 1 if self.level == "char" else None

    def encode(self, text: str) -> list[int]:
        text = self._normal(text)
        if self.level == "char":
            index = self._lookup()
            return [index.get(c, 1) for c in text]
        return self._tokenizer.encode(text).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if self.level == "char":
            return [self.encode(t) for t in texts]
        return [e.ids for e in self._tokenizer.encode_batch([self._normal(t) for t in texts])]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        if self.level == "char":
            chars = self.chars_
            return "".join(chars[i - 2] if 2 <= i < 2 + len(chars) else "\ufffd" for i in ids if i != self.pad_id)
        return self._tokenizer.decode(ids)  # skips <pad>

    def _lookup(self) -> dict[str, int]:
        if len(self._index) != len(self.chars_):
            self._index = {c: i + len(SPECIALS) for i, c in enumerate(self.chars_)}
        return self._index

    def encode_padded(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, max_length) long ids: left-padded with ``pad_id`` so the last position holds the last
        token (what ``pooling: last`` of recurrent and causal models reads); longer texts keep
        their first ``max_length`` tokens."""
        out = torch.full((len(texts), self.max_length), self.pad_id, dtype=torch.long)
        for row, ids in enumerate(self.encode_batch(list(texts))):
            ids = ids[: self.max_length]
            if ids:
                out[row, self.max_length - len(ids):] = torch.tensor(ids, dtype=torch.long)
        return out

    def batch(self, x: torch.Tensor, train: bool = False, seed: int | None = None) -> torch.Tensor:
        return x  # ids stay long: the model's embedding looks them up

    def to_dict(self) -> dict[str, Any]:
        data = {"kind": "text", "level": self.level, "lowercase": self.lowercase,
                "bpe_vocab_size": self.bpe_vocab_size, "block_size": self.block_size, "stride": self.stride,
                "max_length": self.max_length}
        if self.level == "char":
            data["chars"] = self.chars_
        else:
            data["tokenizer"] = self._tokenizer.to_str()  # the Hugging Face tokenizer JSON, whole
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextPreprocessor:
        pre = cls(data["level"], data["lowercase"], data.get("bpe_vocab_size", 512), data["block_size"],
                  data.get("stride"), data["max_length"])
        if pre.level == "char":
            pre.chars_ = list(data["chars"])
        else:
            pre._tokenizer = require("tokenizers", "text").Tokenizer.from_str(data["tokenizer"])
        return pre


def _bpe_tokenizer(tk):
    tokenizer = tk.Tokenizer(tk.models.BPE())
    # no prefix space: decode(encode(s)) gives s back exactly
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk.decoders.ByteLevel()
    return tokenizer


def _lines(texts: list[str]):
    for text in texts:
        yield from text.splitlines(keepends=True)


# -- reading ------------------------------------------------------------------------------------


def read_text(path: str | Path, key: str = "data.path") -> str:
    """A text file, or every ``*.txt`` file of a folder (and its sub-folders) in sorted order of
    their relative paths, joined by a newline. UTF-8 (a BOM is dropped); ``\\r\\n`` becomes ``\\n``.
    Files without the ``.txt`` suffix in a folder are skipped (READMEs, licences, binaries).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{key}: file or folder not found: {where(path)}; check the path")
    if path.is_dir():
        files = sorted((p for p in path.rglob("*.txt") if p.is_file()
                        and not any(part.startswith(".") for part in p.relative_to(path).parts)),
                       key=lambda p: p.relative_to(path).as_posix())
        if not files:
            raise DataError(f"{key}: {path} holds no .txt files; put the text in FILE.txt files there")
        text = "\n".join(_read_file(f, key) for f in files)
    else:
        text = _read_file(path, key)
    if not text.strip():
        raise DataError(f"{key}: {path} is empty; put text in it or point {key} at another "
                        f"{'folder' if path.is_dir() else 'file'}")
    return text


def _read_file(path: Path, key: str) -> str:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{key}: {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                        f"re-save it as UTF-8, e.g. iconv -f latin1 -t utf-8") from None
    return text.replace("\r\n", "\n")


def table_texts(frame, cfg: TextConfig, origin: str) -> list[str]:
    """The texts of a table's ``cfg.text_column``, naming the columns found when it is missing."""
    if cfg.text_column not in frame.columns:
        columns = [str(c) for c in frame.columns]
        raise DataError(f"data.text_column: column '{cfg.text_column}' not found in {origin}"
                        f"{did_you_mean(cfg.text_column, columns)}; columns are: {', '.join(columns[:20])}")
    # a missing text is an empty one: it becomes all padding rather than a crash
    return frame[cfg.text_column].fillna("").astype(str).tolist()


# -- language-model blocks ----------------------------------------------------------------------


def text_blocks(pre: TextPreprocessor, text: str, what: str, advice: str = "lower data.block_size") -> Split:
    """Cut ``text`` into (N, block_size) inputs and next-token targets, blocks every ``pre.stride``
    tokens. ``what`` names the text in the error when it is shorter than one block."""
    ids = torch.tensor(pre.encode(text), dtype=torch.long)
    need = pre.block_size + 1  # a block's inputs plus the token after its last one
    if len(ids) < need:
        raise DataError(f"data.block_size: {what} has {len(ids)} tokens, but one block needs {need} "
                        f"(block_size + 1); {advice}")
    windows = ids.unfold(0, need, pre.stride)  # (N, block_size + 1), overlapping by one token at stride block_size
    return Split(windows[:, :-1].contiguous(), windows[:, 1:].contiguous())


def language_model_bundle(text: str, cfg: TextConfig, origin: str) -> DataBundle:
    """Split the text chronologically by characters, fit the tokenizer on the training part, cut blocks."""
    from .preprocess import Preprocessing

    if cfg.augment is not None:
        raise DataError("data.augment: augmentation applies to image data only, and this is text; remove it")
    n = len(text)
    n_test = round(n * cfg.test_fraction)
    n_val = round(n * cfg.val_fraction)
    bounds = {"train": (0, n - n_val - n_test), "val": (n - n_val - n_test, n - n_test), "test": (n - n_test, n)}
    pre = TextPreprocessor.from_config(cfg).fit(text[slice(*bounds["train"])])
    splits: dict[str, Split | None] = {}
    for name, (start, stop) in bounds.items():
        fraction = {"train": 1.0, "val": cfg.val_fraction, "test": cfg.test_fraction}[name]
        if fraction <= 0:
            splits[name] = None
            continue
        key = {"train": "use more text", "val": "raise data.val_fraction", "test": "raise data.test_fraction"}[name]
        splits[name] = text_blocks(pre, text[start:stop], f"the {name} split of {origin}",
                                   f"lower data.block_size or {key}")
    train = splits["train"]
    if cfg.limit:
        train = Split(train.x[: cfg.limit], train.y[: cfg.limit])
    spec = DataSpec(kind="tokens", input_shape=(pre.block_size,), target="token", vocab_size=pre.vocab_size)
    return DataBundle(spec, train, splits["val"], splits["test"], Preprocessing(pre, "token"))


# -- the source ---------------------------------------------------------------------------------


@register_source("text")
class TextSource(DataSource):
    Config = TextConfig
    description = "a text file or folder (language model), or a CSV of texts and labels (text classification)"

    def load(self, cfg: TextConfig, task: str | None) -> DataBundle:
        path = Path(cfg.path).expanduser()
        if not path.exists():
            raise DataError(f"data.path: file or folder not found: {where(path)}; check the path")
        if path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:
            from .tabular import read_table

            frame = read_table(path, cfg.delimiter)
            texts = table_texts(frame, cfg, str(path))
            if task == "language_model":  # a masked LM reads a labelled table as its lines, as fine-tuning will
                text = "\n".join(texts)
                if not text.strip():
                    raise DataError(f"data.path: {path} is empty (column '{cfg.text_column}' holds no text); "
                                    f"point data.path at another file")
                return language_model_bundle(text, cfg, str(path))
            return super().load(cfg, task)
        if task is not None and task not in BLOCK_TASKS:
            raise DataError(f"data.path: {path} is plain text without labels, and task '{task}' needs them; give a "
                            f"CSV with data.text_column and data.label_column, or use task: language_model")
        return language_model_bundle(read_text(path), cfg, str(path))

    def read(self, cfg: TextConfig, task: str | None) -> RawData:
        """A table of texts and labels, for ``pipeline.build_bundle`` (kind "text")."""
        from .tabular import read_table

        path = Path(cfg.path).expanduser()
        if path.suffix.lower() not in TABLE_SUFFIXES:
            raise DataError(f"data.path: {path} is plain text, which splits chronologically into language-model "
                            f"blocks, not into samples; cross-validation needs a table of texts and labels")
        frame = read_table(path, cfg.delimiter)
        texts = table_texts(frame, cfg, str(path))
        if cfg.label_column not in frame.columns:
            columns = [str(c) for c in frame.columns]
            raise DataError(f"data.label_column: column '{cfg.label_column}' not found in {path}"
                            f"{did_you_mean(cfg.label_column, columns)}; columns are: {', '.join(columns[:20])}; "
                            f"or set task: language_model to model the text alone")
        x = np.empty(len(texts), dtype=object)
        x[:] = texts
        return RawData("text", x, frame[cfg.label_column].to_numpy(), target_names=[cfg.label_column],
                       origin=str(path))
