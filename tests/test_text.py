"""The text source: character and byte-level BPE tokenizers, language-model blocks and their
chronological split, folders of text files, text classification end to end, and one-line errors."""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import assert_one_line_error, cli, quick_train, run_dirs, write_yaml

from layerwise.data import load_data
from layerwise.data.pipeline import Preprocessing
from layerwise.data.text import TextPreprocessor, read_text, text_blocks
from layerwise.runs.config import load_config

pytest.importorskip("tokenizers")

UNICODE = "  Café — naïve 😀 façade\n\tTabs,  double  spaces\r\nand 日本語; trailing space \n"


def _config(data: dict, task: str | None = None):
    cfg = {"data": {"source": "text", **data}, "model": {"family": "transformer"}}
    return load_config({**cfg, "task": task} if task else cfg)


def _random_text(n: int, seed: int = 0) -> str:
    """Random words: positions are identifiable, so slices of the text can be told apart."""
    rng = random.Random(seed)
    words = ["thou", "art", "more", "lovely", "and", "temperate", "rough", "winds", "do", "shake"]
    text = ""
    while len(text) < n:
        text += rng.choice(words) + rng.choice([" ", " ", ", ", "\n"])
    return text[:n]


# -- tokenizers ----------------------------------------------------------------------------------


def test_char_tokenizer_round_trip_unknown_and_restore():
    pre = TextPreprocessor("char").fit("hello world\n")
    assert pre.vocab_size == 2 + len(set("hello world\n"))  # <pad>, <unk> and the characters seen
    assert pre.decode(pre.encode("hold the world")) == "hold \ufffdhe world"  # 't' was never seen: <unk>
    assert pre.encode("t") == [pre.unk_id] and pre.pad_id == 0
    restored = TextPreprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert restored.encode("low herd") == pre.encode("low herd") and restored.vocab_size == pre.vocab_size
    assert TextPreprocessor("char", lowercase=True).fit("abc").encode("ABC") == [2, 3, 4]


def test_bpe_round_trip_is_exact_and_restores_from_json():
    pre = TextPreprocessor("bpe", bpe_vocab_size=300).fit(_random_text(4000) + UNICODE)
    assert pre.vocab_size == 300 and pre.unk_id is None
    for text in (UNICODE, "", "\n\n", "zebra quokka ∑ ∫ 🙂", _random_text(500, seed=3)):
        assert pre.decode(pre.encode(text)) == text
    assert len(pre.encode(" temperate")) < len(" temperate")  # frequent words were merged
    restored = TextPreprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert restored.encode(UNICODE) == pre.encode(UNICODE)
    # left padding: the real tokens end at the last position
    padded = pre.encode_padded(["thou art", ""])
    ids = pre.encode("thou art")
    assert padded[0, -len(ids):].tolist() == ids and (padded[0, : -len(ids)] == pre.pad_id).all()
    assert (padded[1] == pre.pad_id).all()


def test_bpe_is_trained_on_the_training_text_only(tmp_path):
    # 'zyzzyva' fills the end of the file: the validation and test parts, never the training part
    train = _random_text(6000)
    held_out = " zyzzyva" * 250
    path = tmp_path / "corpus.txt"
    path.write_text(train + held_out)
    fraction = len(held_out) / (len(train) + len(held_out)) / 2
    cfg = _config({"path": str(path), "tokenizer": "bpe", "vocab_size": 320, "block_size": 16,
                   "val_fraction": fraction, "test_fraction": fraction})
    pre = load_data(cfg.data).preprocessor.inputs
    assert len(pre.encode(" zyzzyva")) >= 4  # unseen in training: no merges for it
    # the contrast: fitted on the whole text, the word would have become one or two tokens
    everything = TextPreprocessor("bpe", bpe_vocab_size=320).fit(train + held_out)
    assert len(everything.encode(" zyzzyva")) <= 2


# -- language-model blocks -----------------------------------------------------------------------


def test_blocks_are_shifted_and_the_split_is_chronological(tmp_path):
    text = _random_text(2000)
    path = tmp_path / "story.txt"
    path.write_text(text)
    cfg = _config({"path": str(path), "block_size": 10, "val_fraction": 0.1, "test_fraction": 0.2})
    bundle = load_data(cfg.data)
    spec, pre = bundle.spec, bundle.preprocessor.inputs
    assert (spec.kind, spec.target, spec.input_shape, spec.vocab_size) == ("tokens", "token", (10,), pre.vocab_size)
    assert bundle.preprocessor.target == "token"
    for split in (bundle.train, bundle.val, bundle.test):
        assert split.x.dtype == split.y.dtype == torch.long and split.x.shape[1] == 10
        assert torch.equal(split.y[:, :-1], split.x[:, 1:])  # y is x shifted by one token
        assert torch.equal(split.y[:-1, -1], split.x[1:, 0])  # stride = block_size: blocks follow on
    # train is the start, val the next 10%, test the last 20% of the characters
    assert pre.decode(bundle.train.x[0].tolist()) == text[:10]
    assert pre.decode(bundle.val.x[0].tolist()) == text[1400:1410]
    assert pre.decode(bundle.test.x[0].tolist()) == text[1600:1610]
    assert len(bundle.test) == (400 - 11) // 10 + 1
    # the vocabulary comes from the training part: a character only in the test part is <unk>
    path.write_text(text[:1600] + "#" * 400)
    bundle = load_data(cfg.data)
    assert "#" not in bundle.preprocessor.inputs.chars_
    assert (bundle.test.x == bundle.preprocessor.inputs.unk_id).all()


def test_stride_overlaps_blocks():
    pre = TextPreprocessor("char", block_size=8, stride=3).fit("abcdefghijklmnopqrstuvwxyz")
    split = text_blocks(pre, "abcdefghijklmnopqrstuvwxyz", "alphabet")
    assert len(split) == (26 - 9) // 3 + 1
    assert pre.decode(split.x[1].tolist()) == "defghijk" and pre.decode(split.y[1].tolist()) == "efghijkl"


def test_folder_is_read_in_sorted_order(tmp_path):
    folder = tmp_path / "books"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("beta")
    (folder / "a.txt").write_text("alpha")
    (folder / "sub" / "c.txt").write_text("gamma")
    (folder / "NOTES").write_text("not a .txt file")
    (folder / ".hidden.txt").write_text("hidden")
    (folder / "d.txt").write_bytes("\ufeffdelta\r\nend".encode())  # a BOM and Windows line ends
    assert read_text(folder) == "alpha\nbeta\ndelta\nend\ngamma"
    cfg = _config({"path": str(folder), "block_size": 4, "val_fraction": 0.0, "test_fraction": 0.0})
    bundle = load_data(cfg.data)
    assert bundle.val is None and bundle.test is None
    assert bundle.preprocessor.inputs.decode(bundle.train.x[0].tolist()) == "alph"


def test_csv_with_task_language_model_models_the_text_column(tmp_path):
    path = tmp_path / "lines.csv"
    pd.DataFrame({"line": ["first line", "second line", "third line"] * 20}).to_csv(path, index=False)
    cfg = _config({"path": str(path), "text_column": "line", "block_size": 8, "val_fraction": 0.1,
                   "test_fraction": 0.0}, task="language_model")
    bundle = load_data(cfg.data, "language_model")
    assert bundle.spec.target == "token"
    assert bundle.preprocessor.inputs.decode(bundle.train.x[0].tolist()) == "first li"
    assert bundle.preprocessor.inputs.decode(bundle.train.x[1].tolist()) == "ne\nsecon"  # rows joined by \n


# -- text classification ---------------------------------------------------------------------------


def _play_csv(path: Path, n: int = 150, seed: int = 0) -> Path:
    """Lines of three 'plays', each with words of its own: learnable in a couple of epochs."""
    rng = random.Random(seed)
    words = {"comedy": ["jest", "fool", "merry", "song"], "tragedy": ["death", "tomb", "poison", "woe"],
             "history": ["crown", "king", "war", "throne"]}
    rows = []
    for i in range(n):
        label = list(words)[i % 3]
        line = " ".join(rng.choice(words[label] + ["the", "and", "my"]) for _ in range(rng.randint(3, 9)))
        rows.append({"id": i, "text": line, "label": label})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_text_classification_trains_predicts_and_restores_its_tokenizer(tmp_path, monkeypatch):
    _play_csv(tmp_path / "plays.csv")
    pd.read_csv(tmp_path / "plays.csv").head(6).drop(columns="label").to_csv(tmp_path / "new.csv", index=False)
    cfg = {"name": "plays", "data": {"source": "text", "path": "plays.csv", "tokenizer": "bpe", "vocab_size": 280,
                                     "max_length": 12},
           "model": {"family": "transformer", "width": 16, "heads": 2, "layers": 1, "pooling": "mean"},
           "train": quick_train(epochs=4, lr=0.01, batch_size=16)}
    code, _out, err = cli("train", write_yaml(tmp_path / "plays.yaml", cfg), cwd=tmp_path)
    assert code == 0, err
    (run,) = run_dirs(tmp_path / "runs")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["metrics"]["accuracy"] > 0.6  # guessing gives 1/3

    data = json.loads((run / "data.json").read_text())
    assert data["spec"]["kind"] == "tokens" and data["spec"]["input_shape"] == [12]
    assert data["preprocessing"]["inputs"]["level"] == "bpe"
    # the tokenizer in data.json gives the ids the training pipeline gave
    restored = Preprocessing.from_dict(data["preprocessing"]).inputs
    monkeypatch.chdir(tmp_path)  # the config's data.path is relative, as a user writes it
    bundle = load_data(load_config(run / "config.yaml").data, "classification")
    frame = pd.read_csv(tmp_path / "plays.csv")
    assert restored.vocab_size == bundle.spec.vocab_size == data["spec"]["vocab_size"]
    assert torch.equal(restored.encode_padded(frame["text"].tolist()),
                       bundle.preprocessor.inputs.encode_padded(frame["text"].tolist()))

    code, _out, err = cli("predict", run, "new.csv", "--out", "preds.csv", cwd=tmp_path)
    assert code == 0, err
    preds = pd.read_csv(tmp_path / "preds.csv")
    assert len(preds) == 6 and set(preds["pred"]) <= {"comedy", "tragedy", "history"}
    assert {"prob_comedy", "prob_history", "prob_tragedy"} <= set(preds.columns)

    import layerwise

    loaded = layerwise.load_run(run)
    result = loaded.evaluate(data=tmp_path / "plays.csv")
    assert 0 <= result["accuracy"] <= 1 and result["accuracy"] > 0.6
    direct = loaded.predict(["the crown and the king", "poison and death"])
    assert [loaded.preprocessing.classes[i] for i in direct["label"]] == ["history", "tragedy"]


# -- errors through the CLI ------------------------------------------------------------------------


def test_user_errors_are_one_line(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (tmp_path / "short.txt").write_text(_random_text(600))
    pd.DataFrame({"sentence": ["a b"] * 10, "label": [0, 1] * 5}).to_csv(tmp_path / "cols.csv", index=False)
    cases = {
        "empty": ({"path": "empty.txt"}, ("data.path", "empty.txt", "is empty")),
        "not_utf8": ({"path": "latin1.txt"}, ("data.path", "latin1.txt", "not UTF-8", "0xe9")),
        "block_too_large": ({"path": "short.txt", "block_size": 100},
                            ("data.block_size", "val split", "60 tokens", "needs 101", "lower data.block_size")),
        "missing_text_column": ({"path": "cols.csv"}, ("data.text_column", "'text'", "cols.csv", "sentence, label")),
    }

    def run(item):
        name, (data, _fragments) = item
        cfg = {"data": {"source": "text", **data}, "model": {"family": "transformer", "width": 8, "heads": 1,
                                                             "layers": 1}, "train": quick_train(epochs=1)}
        return cli("train", write_yaml(tmp_path / f"{name}.yaml", cfg), cwd=tmp_path)

    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(cases, pool.map(run, cases.items())))
    for name, (code, _out, err) in results.items():
        assert_one_line_error(code, err, *cases[name][1])
    assert run_dirs(tmp_path / "runs") == []  # nothing half-written


@pytest.mark.parametrize("data, task, fragments", [
    ({"path": "nowhere.txt"}, None, ("data.path", "nowhere.txt", "not found")),
    ({"path": "nolabel.csv"}, None, ("data.label_column", "'label'", "columns are: text", "task: language_model")),
    ({"path": "story.txt"}, "classification", ("data.path", "story.txt", "without labels", "data.label_column")),
    ({"path": "story.txt", "tokenizer": "bpe", "vocab_size": 100}, None, ("data.vocab_size", "100", "257")),
    ({"path": "story.txt", "block_size": 2000}, None, ("data.block_size", "train split", "needs 2001")),
    ({"path": "books"}, None, ("data.path", "books", "no .txt files")),
])
def test_more_errors_name_the_key(tmp_path, monkeypatch, data, task, fragments):
    from layerwise.core.errors import LayerwiseError

    monkeypatch.chdir(tmp_path)
    pd.DataFrame({"text": ["a b"] * 10}).to_csv("nolabel.csv", index=False)
    Path("story.txt").write_text(_random_text(1000))
    Path("books").mkdir()
    (tmp_path / "books" / "README").write_text("no suffix: skipped")
    with pytest.raises(LayerwiseError) as info:
        load_data(_config(data, task).data, task)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
