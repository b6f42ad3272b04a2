"""How far to trust an explanation: deletion/insertion curves, infidelity, sensitivity and the
model-randomisation check, on tiny hand-built models whose true attributions are known."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from layerwise.core.errors import ConfigError
from layerwise.tools.explain.trust import (
    assess,
    deletion_insertion,
    plot_curves,
    random_curves,
    randomise,
    rank_correlation,
)

KEYS = {"deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc", "infidelity",
        "sensitivity", "randomisation_spearman"}


def linear_model(features: int = 12, seed: int = 0) -> nn.Linear:
    """Two classes with logits (-x.w, x.w): class 1's true attribution is x * w, class 0's is -x * w."""
    w = torch.randn(features, generator=torch.Generator().manual_seed(seed))
    model = nn.Linear(features, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.stack([-w, w]))
    return model


def exact_for(model: nn.Linear):
    """The exact attribution of a bias-free linear model w.r.t. the baseline 0: x * w_target."""
    return lambda x, t: x * model.weight.detach()[t]


def gradient_x_input_for(model: nn.Module):
    def explain(x, t):
        with torch.enable_grad():  # Captum's sensitivity calls explanations under no_grad
            z = x.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(model(z).gather(1, t.view(-1, 1)).sum(), z)
        return (grad * z).detach()

    return explain


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 3)).eval()


def test_the_exact_attribution_beats_random_rankings():
    model = linear_model()
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(1))
    out = assess(model, exact_for(model), x, None, baseline=0.0, model=model, explain_for=exact_for)
    assert set(out) == KEYS and all(math.isfinite(v) for v in out.values())
    assert out["deletion_auc"] < out["random_deletion_auc"] - 0.2
    assert out["insertion_auc"] > out["random_insertion_auc"] + 0.1
    chance = random_curves(model, x, None, 0.0, steps=20)  # the curves behind assess's random columns
    assert chance["deletion_auc"] == pytest.approx(out["random_deletion_auc"])
    # the reversed ranking (least important first) is worse than random on both curves
    reverse = deletion_insertion(model, x, -exact_for(model)(x, model(x).argmax(1)), None, 0.0, steps=12)
    assert reverse["deletion_auc"] > out["random_deletion_auc"]
    assert reverse["insertion_auc"] < out["random_insertion_auc"]


def test_curves_run_from_the_input_to_the_baseline():
    model = linear_model()
    x = torch.randn(16, 12, generator=torch.Generator().manual_seed(2))
    target = torch.ones(16, dtype=torch.long)
    curves = deletion_insertion(model, x, x, target, baseline=0.5, steps=4)
    with torch.no_grad():
        full = model(x).softmax(1)[:, 1].mean().item()
        empty = model(torch.full_like(x, 0.5)).softmax(1)[:, 1].mean().item()
    assert curves["fractions"] == [0.0, 0.25, 0.5, 0.75, 1.0]  # 12 features in 4 chunks of 3
    assert curves["deletion"][0] == pytest.approx(full) and curves["deletion"][-1] == pytest.approx(empty)
    assert curves["insertion"][0] == pytest.approx(empty) and curves["insertion"][-1] == pytest.approx(full)
    expected = sum((a + b) / 2 * 0.25 for a, b in zip(curves["deletion"], curves["deletion"][1:]))
    assert curves["deletion_auc"] == pytest.approx(expected)  # the trapezoid rule on the mean curve


def test_groups_are_removed_together_ranked_by_summed_attribution():
    seen = []

    def forward(batch):  # a user forward that records what it was given
        seen.append(batch.clone())
        return torch.stack([batch.sum(1), -batch.sum(1)], 1)

    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    scores = torch.tensor([[5.0, -1.0, 3.0, 1.0]])  # group sums: {0, 1} = 4, {2} = 3, {3} = 1
    groups = torch.tensor([0, 0, 1, 2])
    curves = deletion_insertion(forward, x, scores, 0, baseline=0.0, steps=20, groups=groups)
    assert curves["fractions"] == pytest.approx([0, 1 / 3, 2 / 3, 1])  # no more steps than groups
    deleted = torch.cat(seen[0::2])  # each call holds the deletion batch, then the insertion batch
    assert deleted.tolist() == [[1, 2, 3, 4], [0, 0, 3, 4], [0, 0, 0, 4], [0, 0, 0, 0]]
    seen.clear()
    deletion_insertion(forward, x, scores, 0, baseline=0.0, steps=4)  # one feature at a time
    assert torch.cat(seen[0::2]).tolist() == [[1, 2, 3, 4], [0, 2, 3, 4], [0, 2, 0, 4], [0, 2, 0, 0], [0, 0, 0, 0]]


def test_randomisation_check_separates_model_blind_explanations():
    model = mlp()
    x = torch.randn(48, 20, generator=torch.Generator().manual_seed(3))
    blind = assess(model, lambda x, t: x, x, None, baseline=0.0, model=model,
                   explain_for=lambda m: (lambda x, t: x))
    aware = assess(model, gradient_x_input_for(model), x, None, baseline=0.0, model=model,
                   explain_for=gradient_x_input_for)
    assert blind["randomisation_spearman"] == pytest.approx(1.0)
    assert aware["randomisation_spearman"] < 0.8
    for out in (blind, aware):
        assert out["infidelity"] >= 0 and math.isfinite(out["infidelity"])
        assert out["sensitivity"] >= 0 and math.isfinite(out["sensitivity"])


def test_randomisation_check_looks_only_at_features_present_in_the_input():
    # 80% of each input sits at the baseline (MNIST's black background): gradient x input is 0 there
    # for any weights, a shared tie that would make the maps look unchanged if it were counted
    model = mlp()
    g = torch.Generator().manual_seed(7)
    x = torch.randn(48, 20, generator=g) * (torch.rand(48, 20, generator=g) < 0.2)
    out = assess(model, gradient_x_input_for(model), x, None, baseline=0.0, model=model,
                 explain_for=gradient_x_input_for)
    assert out["randomisation_spearman"] < 0.8


def test_infidelity_is_zero_for_the_exact_linear_attribution():
    model = linear_model()
    x = torch.randn(32, 12, generator=torch.Generator().manual_seed(4))
    exact = assess(model, exact_for(model), x, None, baseline=0.0)
    wrong = assess(model, lambda x, t: x, x, None, baseline=0.0)
    assert exact["infidelity"] < 1e-6 < wrong["infidelity"]
    assert "randomisation_spearman" not in exact  # no model given: the check is left out


def test_randomise_reinitialises_every_parameter_and_keeps_the_original():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    model.register_parameter("offset", nn.Parameter(torch.zeros(2)))  # no reset_parameters covers it
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clone = randomise(model, seed=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    changed = {k for k, v in clone.state_dict().items() if not torch.equal(before[k], v)}
    assert {"0.weight", "0.bias", "2.weight", "2.bias", "offset"} <= changed
    assert torch.equal(randomise(model, seed=0)[0].weight, clone[0].weight)  # seeded


def test_rank_correlation_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(5)
    a, b = torch.randint(0, 4, (6, 40), generator=g).float(), torch.randint(0, 4, (6, 40), generator=g).float()
    ours = rank_correlation(a, b)
    assert ours.tolist() == pytest.approx([spearmanr(a[i], b[i]).statistic for i in range(6)])
    assert rank_correlation(torch.zeros(1, 5), a[:1, :5]).item() == 0.0  # a constant map has no ranking
    mask = torch.rand(6, 40, generator=g) < 0.5
    masked = rank_correlation(a, b, mask)
    assert masked.tolist() == pytest.approx([spearmanr(a[i][mask[i]], b[i][mask[i]]).statistic for i in range(6)])


def test_token_inputs_get_curves_but_no_gradient_metrics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(24, 2)).eval()
    x = torch.randint(1, 10, (8, 6))

    def occlusion_for(m):  # how much the target logit drops when one token becomes padding (id 0)
        def explain(ids, t):
            with torch.no_grad():
                full = m(ids).gather(1, t.view(-1, 1))
                drops = []
                for j in range(ids.shape[1]):
                    masked = ids.clone()
                    masked[:, j] = 0
                    drops.append(full - m(masked).gather(1, t.view(-1, 1)))
            return torch.cat(drops, 1)

        return explain

    out = assess(model, occlusion_for(model), x, None, baseline=0, model=model, explain_for=occlusion_for)
    assert set(out) == KEYS - {"infidelity", "sensitivity"}
    assert out["deletion_auc"] < out["random_deletion_auc"]


def test_bad_explanation_shape_is_a_one_line_error():
    model = linear_model()
    with pytest.raises(ConfigError, match="shaped like x") as err:
        assess(model, lambda x, t: x[:, :3], torch.randn(4, 12), None, baseline=0.0)
    assert "\n" not in str(err.value)


def test_plot_curves_writes_a_picture(tmp_path):
    model = linear_model()
    x = torch.randn(8, 12, generator=torch.Generator().manual_seed(6))
    curves = {"exact": deletion_insertion(model, x, exact_for(model)(x, model(x).argmax(1)), None, 0.0, 6),
              "random": random_curves(model, x, None, 0.0, 6)}
    path = plot_curves(curves, tmp_path / "curves.png", title="linear")
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
