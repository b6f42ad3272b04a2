"""Generate examples/data/loans.csv: synthetic loan decisions with a built-in bias (seeded, reproducible).

    python examples/data/make_loans.py

2,000 applicants: age, income, loan amount, credit score, employment type, ``sex`` (F/M) and the
historical decision ``approved`` (0/1). The past decisions were biased twice over, as real lending
data has been: women were approved less often at equal merit (a direct penalty in the decision),
and they earn less on average and work part-time more often (proxies a model can pick up even when
the ``sex`` column is left out of its features). ``layerwise evaluate RUN --sensitive sex`` shows
the gap; see docs/fairness.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

ROWS = 2000
SEED = 11


def make(rows: int = ROWS, seed: int = SEED) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    female = rng.random(rows) < 0.5
    age = rng.integers(21, 70, rows)
    employment = np.where(rng.random(rows) < np.where(female, 0.35, 0.12), "part_time",
                          rng.choice(["salaried", "self_employed"], rows, p=[0.8, 0.2]))
    # yearly income: lower for part-time work and, at equal work, for women (the proxy)
    income = rng.lognormal(10.8, 0.35, rows) * np.where(employment == "part_time", 0.6, 1.0) * np.where(female, 0.85, 1.0)
    income = np.round(income, -2)
    credit_score = np.clip(np.round(rng.normal(660, 70, rows)), 350, 850)
    loan_amount = np.round(rng.lognormal(9.6, 0.5, rows), -2)

    # merit: income relative to the loan and the credit score; the past decision adds a penalty for women
    merit = (1.6 * (np.log(income) - np.log(loan_amount) - 1.2) + 0.012 * (credit_score - 660)
             + 0.01 * (age - 40) - 0.4 * (employment == "self_employed"))
    logit = merit - 0.9 * female
    approved = (rng.random(rows) < 1 / (1 + np.exp(-2.0 * logit))).astype(int)

    return pd.DataFrame({
        "applicant_id": [f"L{20000 + i}" for i in range(rows)],
        "sex": np.where(female, "F", "M"),
        "age": age,
        "income": income,
        "loan_amount": loan_amount,
        "credit_score": credit_score.astype(int),
        "employment": employment,
        "approved": approved,
    })


if __name__ == "__main__":
    out = Path(__file__).with_name("loans.csv")
    make().to_csv(out, index=False)
    print(f"wrote {out}")
