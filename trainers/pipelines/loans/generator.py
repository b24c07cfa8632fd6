"""A seeded generator of loan applications with a plausible default process.

``shift`` in [0, 1] moves the population: incomes fall, unemployment rises, the purpose mix
turns to business and medical loans, and debt weighs more heavily on default.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

EMPLOYMENT = ["employed", "self_employed", "unemployed", "retired", "student"]
PURPOSES = [
    "debt_consolidation",
    "home_improvement",
    "car",
    "education",
    "medical",
    "business",
    "other",
]
TERMS = [12, 24, 36, 48, 60]

_PURPOSE_MIX = np.array([0.35, 0.20, 0.20, 0.08, 0.07, 0.05, 0.05])
_PURPOSE_MIX_SHIFTED = np.array([0.22, 0.06, 0.08, 0.07, 0.22, 0.27, 0.08])
_PURPOSE_SIZE = np.array([0.35, 0.45, 0.30, 0.25, 0.15, 0.60, 0.20])
_PURPOSE_RISK = np.array([0.25, -0.35, -0.20, 0.10, 0.45, 0.55, 0.30])
_LOG_INCOME = np.array([10.95, 11.00, 9.70, 10.30, 9.40])
_EMPLOYMENT_RISK = np.array([0.0, 0.35, 1.30, 0.15, 0.55])


def generate(rows: int, shift: float = 0.0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    s = float(np.clip(shift, 0.0, 1.0))

    age = np.clip(rng.normal(41, 12, rows), 18, 85).round().astype(np.int64)
    employment_p = np.tile([0.70 - 0.12 * s, 0.14, 0.05 + 0.12 * s, 0.06, 0.05], (rows, 1))
    employment_p[age >= 63] = [0.18, 0.08, 0.04, 0.70, 0.0]
    employment_p[age < 25] = [0.45, 0.05, 0.12 + 0.08 * s, 0.0, 0.38 - 0.08 * s]
    employment_p /= employment_p.sum(axis=1, keepdims=True)
    employment = (employment_p.cumsum(axis=1) > rng.random((rows, 1))).argmax(axis=1)

    income = np.exp(rng.normal(_LOG_INCOME[employment], 0.45)) * (1.0 - 0.35 * s)
    income = np.round(np.clip(income, 2_000, 2_000_000), -1)

    mix = (1 - s) * _PURPOSE_MIX + s * _PURPOSE_MIX_SHIFTED
    purpose = rng.choice(len(PURPOSES), size=rows, p=mix / mix.sum())
    loan = income * _PURPOSE_SIZE[purpose] * np.exp(rng.normal(0, 0.5, rows))
    loan = np.round(np.clip(loan, 500, 900_000), -2)
    term_p = np.where(
        loan[:, None] > 20_000, [0.05, 0.15, 0.30, 0.25, 0.25], [0.30, 0.30, 0.25, 0.10, 0.05]
    )
    term = np.array(TERMS)[(term_p.cumsum(axis=1) > rng.random((rows, 1))).argmax(axis=1)]

    debt = np.round(income * rng.beta(1.5, 5, rows) * 0.9, -1)
    history = np.clip(age - 18 - rng.gamma(2.0, 2.0, rows), 0, 67).round(1)

    debt_ratio = np.minimum((debt + loan) / income, 5.0)
    payment_ratio = np.minimum(loan / term * 12 / income, 5.0)
    logit = (
        -3.0
        + (1.6 + 2.4 * s) * debt_ratio
        + 2.5 * payment_ratio
        - 0.06 * history
        + _EMPLOYMENT_RISK[employment]
        + _PURPOSE_RISK[purpose]
        + 0.3 * s
        + rng.normal(0, 0.35, rows)
    )
    defaulted = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)

    debt_missing = rng.random(rows) < 0.10
    history_missing = rng.random(rows) < np.where(age < 25, 0.35, 0.10)
    return pd.DataFrame(
        {
            "income": income.astype(np.float64),
            "age": age,
            "loan_amount": loan.astype(np.float64),
            "term_months": term.astype(np.int64),
            "employment_status": np.array(EMPLOYMENT, dtype=object)[employment],
            "purpose": np.array(PURPOSES, dtype=object)[purpose],
            "existing_debt": np.where(debt_missing, np.nan, debt),
            "credit_history_years": np.where(history_missing, np.nan, history),
            "defaulted": defaulted,
        }
    )
