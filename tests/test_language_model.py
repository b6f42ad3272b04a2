"""Causal language modelling: the step (KV cache / recurrent state) path against full recomputation,
the loss and the streaming evaluator against direct computation, and a tiny character LM trained,
sampled, generated from and evaluated through the real CLI."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_one_line_error, cli, quick_train, run_dirs, write_yaml

from layerwise.core.errors import ModelError
from layerwise.data.loader import BatchLoader
from layerwise.data.spec import DataSpec, Split
from layerwise.models import FAMILIES, build_model
from layerwise.ops.decoding import generate_ids, sample_next, start_ids
from layerwise.tasks import TASKS
from layerwise.tasks.evaluation import evaluate_model

VOCAB = 13
SPEC = DataSpec(kind="tokens", input_shape=(16,), target="token", vocab_size=VOCAB)
FAMILY_CONFIGS = {
    "transformer": {"causal": True, "pooling": "last", "width": 16, "heads": 2, "layers": 2, "max_len": 64},
    "rwkv": {"width": 16, "layers": 2},
    "mingru": {"hidden": 16, "layers": 2, "dropout": 0.0},
    "minlstm": {"hidden": 16, "layers": 2, "dropout": 0.0},
    "lstm": {"embedding": 8, "hidden": 16, "layers": 2},
    "gru": {"embedding": 8, "hidden": 16, "layers": 2},
}
TEXT = ("From fairest creatures we desire increase,\nThat thereby beauty's rose might never die,\n"
        "But as the riper should by time decease,\nHis tender heir might bear his memory:\n") * 12


def lm(family: str, seed: int = 0, spec: DataSpec = SPEC, **overrides):
    torch.manual_seed(seed)
    cfg = FAMILIES.get(family).Config(family=family, **{**FAMILY_CONFIGS[family], **overrides})
    model = build_model(cfg, spec).eval()
    # weights further from the small initialization: varied, confident predictions (no near-ties)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


@torch.no_grad()
def recompute(model, prompt: list[int], n: int, temperature: float = 0.0, seed: int = 0, window: int | None = None):
    """Generation by full recomputation: the whole context through forward_sequence for every token.

    ``window`` mirrors the sliding policy of a transformer at max_len: when the context is full it
    restarts from the last window // 2 tokens."""
    gen = torch.Generator().manual_seed(seed)
    history = list(prompt)
    context = history[-window:] if window else list(history)
    new = []
    for _ in range(n):
        logits = model.forward_head(model.forward_sequence(torch.tensor([context])))[0, -1]
        token = sample_next(logits, temperature, None, gen)
        new.append(token)
        history.append(token)
        context = history[-(window // 2):] if window and len(context) >= window else context + [token]
    return new


@pytest.mark.parametrize("family", list(FAMILY_CONFIGS))
def test_step_generation_equals_full_recomputation(family):
    model = lm(family)
    prompt = [3, 1, 4, 1, 5]
    assert generate_ids(model, prompt, 24, temperature=0) == recompute(model, prompt, 24)
    sampled = generate_ids(model, prompt, 24, temperature=1.0, generator=torch.Generator().manual_seed(4))
    assert sampled == recompute(model, prompt, 24, temperature=1.0, seed=4)
    assert len(set(sampled)) > 2  # a varied stream: the two paths agree on more than a fixed point


def test_kv_cache_sampling_equals_full_recomputation():
    """The acceptance test: the KV-cached transformer samples exactly what recomputation samples."""
    model = lm("transformer", seed=3)
    prompt = [2, 7, 1]
    for temperature in (0.0, 0.7, 1.3):
        cached = generate_ids(model, prompt, 30, temperature=temperature, generator=torch.Generator().manual_seed(5))
        assert cached == recompute(model, prompt, 30, temperature=temperature, seed=5)


def test_sliding_window_at_max_len_equals_recomputation_of_the_window():
    model = lm("transformer", seed=1, max_len=8, spec=DataSpec(kind="tokens", input_shape=(8,), target="token",
                                                             vocab_size=VOCAB))
    prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]  # longer than max_len: only its last 8 tokens fit
    stepped = generate_ids(model, prompt, 30, temperature=0)
    assert stepped == recompute(model, prompt, 30, window=8)
    with pytest.raises(ModelError, match="max_len"):  # the window is what makes 40 positions possible
        model.forward_sequence(torch.tensor([prompt + stepped]))


def test_sampling_is_seeded_and_top_k_restricts():
    model = lm("mingru", seed=2)
    with torch.no_grad():
        model.head.weight.div_(10)  # a flat distribution: samples differ between seeds
    draw = lambda seed, **kw: generate_ids(model, [0], 40, temperature=1.0,
                                           generator=torch.Generator().manual_seed(seed), **kw)
    assert draw(1) == draw(1)
    assert draw(1) != draw(2)
    logits = torch.tensor([0.0, 3.0, 2.9, -1.0, 2.8])
    picks = {sample_next(logits, 5.0, 2, torch.Generator().manual_seed(s)) for s in range(60)}
    assert picks == {1, 2}


def test_loss_is_cross_entropy_over_every_position():
    model = lm("rwkv")
    task = TASKS.get("language_model")(SPEC, quick_train_cfg(), None)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, VOCAB, (3, 16), generator=gen), torch.randint(0, VOCAB, (3, 16), generator=gen)
    out = task.training_step(model, (x, y), None)
    logits = model.forward_head(model.forward_sequence(x))
    assert out.count == 48
    assert torch.allclose(out.loss, F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1)), atol=1e-6)
    assert out.outputs is None  # (B, T, V) logits are not kept per training step
    assert float(out.sums["tokens"]) == 48
    assert int(out.sums["correct"]) == int((logits.argmax(-1) == y).sum())


def quick_train_cfg():
    from layerwise.core.config import TrainConfig

    return TrainConfig(**quick_train())


def test_evaluator_streams_exact_perplexity_over_uneven_batches():
    model = lm("lstm")
    task = TASKS.get("language_model")(SPEC, quick_train_cfg(), None)
    gen = torch.Generator().manual_seed(1)
    split = Split(torch.randint(0, VOCAB, (13, 16), generator=gen), torch.randint(0, VOCAB, (13, 16), generator=gen))
    with torch.no_grad():
        logits = model.forward_head(model.forward_sequence(split.x))
    nll = F.cross_entropy(logits.reshape(-1, VOCAB), split.y.reshape(-1), reduction="sum").item()
    mean = nll / split.y.numel()
    for batch in (5, 13, 4):  # 5+5+3, one batch, 4+4+4+1
        result = evaluate_model(model, task, BatchLoader(split, batch), None)
        assert result["loss"] == pytest.approx(mean, rel=1e-5)
        assert result["perplexity"] == pytest.approx(math.exp(mean), rel=1e-5)
        assert result["bits_per_token"] == pytest.approx(mean / math.log(2), rel=1e-5)
        assert result["accuracy"] == pytest.approx(float((logits.argmax(-1) == split.y).float().mean()))
        assert "bits_per_char" not in result  # no tokenizer: characters unknown


def test_bpe_bits_per_char_counts_the_characters_of_the_evaluated_text():
    pytest.importorskip("tokenizers")
    from layerwise.data.text import TextPreprocessor, text_blocks

    pre = TextPreprocessor("bpe", bpe_vocab_size=300, block_size=16).fit(TEXT)
    spec = DataSpec(kind="tokens", input_shape=(16,), target="token", vocab_size=pre.vocab_size)
    torch.manual_seed(0)
    model = build_model(FAMILIES.get("gru").Config(family="gru", embedding=8, hidden=16), spec).eval()
    from layerwise.data.pipeline import Preprocessing

    task = TASKS.get("language_model")(spec, quick_train_cfg(), Preprocessing(pre, "token"))
    split = text_blocks(pre, TEXT[:900], "test text")
    result = evaluate_model(model, task, BatchLoader(split, 7), None)
    chars = len(pre.decode(split.y.flatten().tolist()))
    nll = result["loss"] * split.y.numel()
    assert result["bits_per_char"] == pytest.approx(nll / math.log(2) / chars, rel=1e-4)
    assert result["bits_per_char"] < result["bits_per_token"]  # a BPE token spans several characters


def test_models_that_cannot_read_left_to_right_are_refused():
    bidirectional = lm("lstm", bidirectional=True)
    with pytest.raises(ModelError, match="bidirectional"):
        generate_ids(bidirectional, [1], 3)
    encoder = build_model(FAMILIES.get("transformer").Config(family="transformer", width=16, heads=2), SPEC)
    with pytest.raises(ModelError, match="causal"):
        TASKS.get("language_model")(SPEC, quick_train_cfg(), None).configure_optimizers(encoder)


def test_empty_prompt_starts_from_a_newline():
    from layerwise.data.text import TextPreprocessor

    pre = TextPreprocessor("char").fit("ab\ncd")
    assert start_ids(pre, "") == pre.encode("\n")
    assert start_ids(TextPreprocessor("char").fit("abcd"), "") == [0]
    assert start_ids(pre, "cab") == pre.encode("cab")


# -- end to end through the CLI ------------------------------------------------------------------


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    """A tiny character LM trained from a text file by `layerwise train` (3 epochs)."""
    folder = tmp_path_factory.mktemp("charlm")
    (folder / "poem.txt").write_text(TEXT)
    (folder / "other.txt").write_text(TEXT[::-1][:800] + TEXT[:800])
    cfg = {"name": "poem", "data": {"source": "text", "path": "poem.txt", "block_size": 32, "val_fraction": 0.1,
                                    "test_fraction": 0.0},
           "model": {"family": "mingru", "hidden": 32, "layers": 2, "dropout": 0.0},
           "train": quick_train(epochs=3, lr=0.01, batch_size=8)}
    code, _out, err = cli("train", write_yaml(folder / "lm.yaml", cfg), cwd=folder)
    assert code == 0, err
    (run,) = run_dirs(folder / "runs")
    return folder, run


def test_char_lm_trains_and_writes_a_sample_per_epoch(char_run):
    _folder, run = char_run
    history = _csv(run / "history.csv")
    losses = [float(row["train_loss"]) for row in history]
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.3
    assert float(history[-1]["val_perplexity"]) == pytest.approx(math.exp(float(history[-1]["val_loss"])), rel=1e-4)
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert [s["epoch"] for s in samples] == [1, 2, 3]
    assert len(samples[-1]["text"]) == 200  # 200 characters (earlier, untrained epochs may draw <pad>)
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert metrics["bits_per_char"] == pytest.approx(metrics["loss"] / math.log(2))
    report = (run / "report.html").read_text()
    assert "Generated samples" in report and "epoch 3" in report


def _csv(path: Path):
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_generate_evaluate_and_errors_through_the_cli(char_run, tmp_path):
    folder, run = char_run
    (tmp_path / "custom.py").write_text(
        "import torch\n"
        "class Bag(torch.nn.Module):\n"
        "    def __init__(self, num_outputs):\n"
        "        super().__init__()\n"
        "        self.embed = torch.nn.EmbeddingBag(40, num_outputs)\n"
        "    def forward(self, x):\n"
        "        return self.embed(x)\n")
    data = {"source": "text", "path": str(folder / "poem.txt"), "block_size": 16}
    configs = {
        "python": {"data": data, "model": {"family": "python", "target": "custom.py:Bag"}, "train": quick_train()},
        "mlp": {"data": data, "model": {"family": "mlp"}, "train": quick_train()},
        "bidirectional": {"data": data, "model": {"family": "lstm", "bidirectional": True}, "train": quick_train()},
    }
    commands = {name: ["train", write_yaml(tmp_path / f"{name}.yaml", cfg)] for name, cfg in configs.items()}
    commands["generate"] = ["generate", run, "--prompt", "To be", "--tokens", 20, "--seed", 1]
    commands["again"] = commands["generate"]
    commands["evaluate"] = ["evaluate", run, "--data", folder / "other.txt"]
    with ThreadPoolExecutor(3) as pool:
        results = dict(zip(commands, pool.map(lambda args: cli(*args, cwd=tmp_path), commands.values())))

    code, out, err = results["generate"]
    assert code == 0, err
    text = out.rstrip("\n")
    assert text.startswith("To be") and len(text) == len("To be") + 20
    assert results["again"][1] == out  # same seed, same text
    code, out, err = results["evaluate"]
    assert code == 0, err
    assert "perplexity" in out and "bits_per_char" in out

    assert_one_line_error(*_code_err(results["python"]), "model.family", "forward_sequence", "transformer")
    assert_one_line_error(*_code_err(results["mlp"]), "model.family", "'mlp'", "tokens")
    assert_one_line_error(*_code_err(results["bidirectional"]), "bidirectional", "causal")
    assert not (tmp_path / "runs").exists()  # refused before any run directory was written


def _code_err(result):
    return result[0], result[2]


def test_generate_from_a_classification_run_is_one_line(tmp_path):
    import layerwise

    run = layerwise.train({"data": {"name": "iris"}, "model": {"family": "mlp", "hidden": [8]},
                           "train": quick_train(epochs=1)}, runs_dir=tmp_path / "runs", quiet=True)
    code, _, err = cli("generate", run.path, "--tokens", 5, cwd=tmp_path)
    assert_one_line_error(code, err, "classification run cannot generate", "language_model")


# -- settings a task implies --------------------------------------------------------------------------


def test_a_language_model_transformer_needs_only_its_family(tmp_path):
    """`task: language_model` + `model: {family: transformer}`: the task makes the transformer causal
    (and pools nothing) unless the user said otherwise; the resolved config records it."""
    import layerwise

    (tmp_path / "poem.txt").write_text(TEXT)
    cfg = {"data": {"source": "text", "path": str(tmp_path / "poem.txt"), "block_size": 16},
           "task": "language_model", "model": {"family": "transformer"},
           "train": quick_train(epochs=1, max_steps=2)}
    run = layerwise.train(cfg, runs_dir=tmp_path / "runs", quiet=True)
    assert run.config.model.causal is True and run.config.model.pooling == "last"
    assert "perplexity" in run.metrics["metrics"]
    assert len(run.generate("From", tokens=5)) > len("From")  # step by step through the KV cache
    # an explicit contrary value is kept, and refused in one line that names the setting
    cfg["model"] = {"family": "transformer", "causal": False}
    with pytest.raises(ModelError, match="causal"):
        layerwise.train(cfg, runs_dir=tmp_path / "bad", quiet=True)
