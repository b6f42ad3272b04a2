"""Image-text contrastive learning: the pairs source reads and checks a CSV of images and captions, the
CLIP loss is the symmetric cross-entropy (identical captions count as matches), recall@k and zero-shot
accuracy are scored, and a run embeds both images and captions."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import assert_one_line_error, cli, quick_train

import layerwise
from layerwise.tasks.clip import clip_loss, recall_at

PAIRS = Path(__file__).resolve().parents[1] / "examples" / "data" / "digit_pairs"
TINY = {"name": "clip", "data": {"source": "pairs", "path": str(PAIRS / "captions.csv"), "label_column": "digit",
                                 "image_size": 8, "max_length": 24},
        "model": {"family": "cnn", "channels": [8], "convs_per_block": 1, "dropout": 0.0},
        "task": {"name": "clip", "text": {"family": "transformer", "width": 16, "heads": 2, "layers": 1},
                 "embed_dim": 8, "prompts": ["the digit {}", "number {}"]},
        "train": quick_train(batch_size=64, lr=0.003)}


def test_the_clip_loss_is_the_symmetric_cross_entropy_of_the_scaled_similarities():
    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    text = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    scale = torch.tensor(math.log(10.0))
    logits = (10 * image @ text.T).tolist()

    def nll(row, target):  # -log softmax(row)[target], by hand
        return -(row[target] - math.log(sum(math.exp(v) for v in row)))

    by_image = sum(nll(logits[i], i) for i in range(3)) / 3
    by_text = sum(nll([logits[j][i] for j in range(3)], i) for i in range(3)) / 3
    assert float(clip_loss(image, text, scale)) == pytest.approx((by_image + by_text) / 2, rel=1e-5)
    # pairs 0 and 1 share a caption: each is a match of the other, the target split between them
    same = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    spread = sum(0.5 * nll(logits[i], 0) + 0.5 * nll(logits[i], 1) for i in (0, 1)) + nll(logits[2], 2)
    spread_t = sum(0.5 * nll([logits[j][i] for j in range(3)], 0) + 0.5 * nll([logits[j][i] for j in range(3)], 1)
                   for i in (0, 1)) + nll([logits[j][2] for j in range(3)], 2)
    assert float(clip_loss(image, text, scale, same)) == pytest.approx((spread + spread_t) / 6, rel=1e-5)


def test_recall_at_k_counts_queries_with_a_match_among_their_k_nearest():
    similarity = torch.tensor([[0.9, 0.1, 0.5], [0.8, 0.7, 0.1], [0.1, 0.2, 0.3]])
    matches = torch.eye(3, dtype=torch.bool)
    assert recall_at(similarity, matches, 1) == pytest.approx(2 / 3)  # query 1 ranks item 0 above its own
    assert recall_at(similarity, matches, 2) == pytest.approx(1.0)


def test_a_pairs_file_with_missing_images_or_columns_is_one_line(tmp_path):
    folder = tmp_path / "pairs"
    shutil.copytree(PAIRS, folder)
    (folder / "images" / "0003.png").unlink()
    (folder / "images" / "0007.png").unlink()
    config = tmp_path / "clip.yaml"
    config.write_text(f"name: clip\ndata: {{source: pairs, path: {folder / 'captions.csv'}}}\n"
                      f"model: {{family: cnn}}\ntask: clip\n")
    code, _, err = cli("train", config, cwd=tmp_path)
    assert_one_line_error(code, err, "2 of 400 images are missing", "row 5", "'images/0003.png'", "data.images")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing written
    frame = pd.read_csv(PAIRS / "captions.csv").rename(columns={"caption": "text"})
    frame.to_csv(folder / "captions.csv", index=False)
    code, _, err = cli("train", config, cwd=tmp_path)
    assert_one_line_error(code, err, "no column 'caption'", "set data.caption_column")


def test_clip_trains_scores_retrieval_and_zero_shot_and_embeds_both_modalities(tmp_path):
    run = layerwise.train(TINY, runs_dir=tmp_path / "runs", quiet=True)
    metrics = run.metrics["metrics"]
    for key in ("i2t_recall_1", "t2i_recall_1", "i2t_recall_5", "t2i_recall_5", "zero_shot_accuracy"):
        assert 0 <= metrics[key] <= 1
    assert metrics["i2t_recall_5"] >= metrics["i2t_recall_1"]
    # any caption of the image's digit is a class match, so class recall is at least the exact one
    assert metrics["i2t_class_recall_1"] >= metrics["i2t_recall_1"] and metrics["t2i_class_recall_5"] <= 1
    loaded = layerwise.load_run(run.path)
    assert hasattr(loaded.model, "pretext") and hasattr(loaded.model.pretext, "text_encoder")
    x = loaded.preprocessing.inputs.batch(loaded.data.test.x[:4])
    assert torch.allclose(loaded.task.embed_images(loaded.model, x), run.task.embed_images(run.model.cpu().eval(), x))
    # zero-shot: every class name in every prompt, averaged, unit length
    classes = loaded.task.class_embeddings(loaded.model)
    assert classes.shape == (10, 8) and torch.allclose(classes.norm(dim=1), torch.ones(10))
    captions = tmp_path / "captions.txt"
    captions.write_text("the digit 3\na handwritten seven\n")
    code, out, err = cli("embed", run.path, captions, "--out", tmp_path / "text.csv", cwd=tmp_path)
    assert code == 0, err
    text = pd.read_csv(tmp_path / "text.csv")
    assert len(text) == 2 and list(text.columns) == ["id"] + [f"z{j}" for j in range(8)]
    code, out, err = cli("embed", run.path, PAIRS / "images", "--out", tmp_path / "images.csv", cwd=tmp_path)
    assert code == 0, err
    assert pd.read_csv(tmp_path / "images.csv").shape == (400, 9)
    assert "Image–text retrieval" in run.report().read_text()
