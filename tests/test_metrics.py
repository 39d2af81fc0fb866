import numpy as np
import pytest
import torch
from torchmetrics.functional.regression import concordance_corrcoef, pearson_corrcoef, r2_score

from emovit.metrics import ccc, pearson, r2, rmse, with_intervals


def test_ccc_hand_computed():
    # x = [1, 2, 3], y = [2, 2, 4]: means 2 and 8/3; population var 2/3 and 8/9; cov 2/3.
    # CCC = 2 * 2/3 / (2/3 + 8/9 + 4/9) = (4/3) / 2 = 2/3
    assert ccc([1, 2, 3], [2, 2, 4]) == pytest.approx(2 / 3)
    assert ccc([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    assert ccc([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert ccc([1, 2, 3], [11, 12, 13]) < 0.1  # r = 1 but shifted: CCC punishes bias


def test_metrics_match_torchmetrics_oracle():
    rng = np.random.default_rng(0)
    x = rng.normal(size=500)
    y = 0.6 * x + rng.normal(0.2, 0.5, size=500)
    tx, ty = torch.tensor(x), torch.tensor(y)
    # torchmetrics' CCC uses sample (N-1) moments; with N = 500 they agree to ~1e-3.
    assert ccc(x, y) == pytest.approx(float(concordance_corrcoef(ty, tx)), abs=2e-3)
    assert pearson(x, y) == pytest.approx(float(pearson_corrcoef(ty, tx)), abs=1e-9)
    assert r2(x, y) == pytest.approx(float(r2_score(ty, tx)), abs=1e-9)
    assert rmse(x, y) == pytest.approx(float(torch.sqrt(torch.mean((tx - ty) ** 2))), abs=1e-9)


def test_evaluate_intervals_bracket_the_value():
    rng = np.random.default_rng(1)
    t = rng.uniform(-1, 1, size=(80, 2))
    p = t + rng.normal(0, 0.3, size=t.shape)
    out = with_intervals(t, p, n_boot=200, seed=0)
    assert out["n"] == 80
    for dim in ("valence", "arousal"):
        for m in ("ccc", "pearson_r", "r2", "rmse"):
            v = out[dim][m]
            assert v["low"] <= v["value"] <= v["high"], (dim, m, v)
    assert out["mean_ccc"] == pytest.approx((out["valence"]["ccc"]["value"] + out["arousal"]["ccc"]["value"]) / 2)
