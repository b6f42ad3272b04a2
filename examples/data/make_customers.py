"""Generate examples/data/customers.csv: a small synthetic churn table (seeded, reproducible).

    python examples/data/make_customers.py

Numeric columns, two text columns, a few missing values, and a 0/1 target ``churned`` that
depends on the features through a noisy logistic model (a linear model scores about 0.8).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

ROWS = 600
SEED = 7


def make(rows: int = ROWS, seed: int = SEED) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, rows)
    plan = rng.choice(["basic", "plus", "premium"], rows, p=[0.5, 0.3, 0.2])
    region = rng.choice(["north", "south", "east", "west"], rows)
    income = np.round(rng.lognormal(10.6, 0.45, rows), -2)  # yearly, around 40k
    tenure = rng.integers(1, 73, rows)  # months
    base_fee = pd.Series(plan).map({"basic": 20.0, "plus": 45.0, "premium": 80.0}).to_numpy()
    monthly_spend = np.round(base_fee + rng.gamma(2.0, 8.0, rows), 2)
    support_calls = rng.poisson(1.5, rows)

    # churn risk: short tenure, many support calls and a cheap plan raise it; high income lowers it
    logit = (0.8 - 0.06 * tenure + 0.55 * support_calls - 0.5 * (plan == "premium") - 0.3 * (plan == "plus")
             + 0.4 * (region == "south") - 0.5 * (np.log(income) - 10.6) + 0.01 * (age - 45))
    churned = (rng.random(rows) < 1 / (1 + np.exp(-2.0 * logit))).astype(int)

    frame = pd.DataFrame({
        "customer_id": [f"C{10000 + i}" for i in range(rows)],
        "age": age.astype(float),
        "income": income,
        "tenure_months": tenure.astype(float),
        "monthly_spend": monthly_spend,
        "support_calls": support_calls,
        "plan": plan,
        "region": region,
        "churned": churned,
    })
    # a few gaps, as real exports have: numeric cells and text cells
    for col, share in (("age", 0.03), ("income", 0.05), ("monthly_spend", 0.02), ("region", 0.04)):
        frame.loc[rng.random(rows) < share, col] = np.nan
    return frame


if __name__ == "__main__":
    out = Path(__file__).with_name("customers.csv")
    make().to_csv(out, index=False)
    print(f"wrote {out}")
