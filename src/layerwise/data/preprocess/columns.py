"""What a table's column is: numbers, numbers with junk in them, dates, or a row identifier.

:mod:`layerwise.data.kinds.tabular` asks these questions of every column before the preprocessor is
fitted; the preprocessor uses the same helpers to read numbers and dates from new rows.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter

import numpy as np

from ...core.errors import DataError

__all__ = ["DATE_PARTS", "DATE_SHARE", "TIME_PARTS", "date_format", "numeric_or_junk", "numeric_target",
           "parse_dates", "refuse_identifiers"]

DATE_SHARE = 0.9  # a text column is dates when this share of its (sampled) values parse as dates
DATE_SAMPLE = 200  # values of a column tried as dates before the whole column is parsed
DATE_PARTS = ("year", "month", "day", "dayofweek", "dayofyear")  # the numeric parts of a date column
TIME_PARTS = ("hour", "minute")  # added when any training value has a time of day
# column names that say "row identifier" whatever the values: id, index, rownames (R's write.csv),
# Unnamed: 0 (pandas' to_csv with its index), and names ending in _id / Id (customer_id, PassengerId)
ID_NAMES = re.compile(r"^(id|index|rownames|unnamed: ?0)$|_id$", re.IGNORECASE)
ID_SUFFIX = re.compile(r"[a-z]Id$")


def numeric_or_junk(column, name: str, origin: str):
    """Decide whether a text column is numeric with junk in it (an error) or categorical.

    A column is called numeric-with-junk when at least 90% of its non-empty values parse as numbers
    but some do not: that is almost always a data-entry problem, not a category.
    """
    import pandas as pd

    values = column.dropna()
    if len(values) == 0:
        return None
    parsed = pd.to_numeric(values, errors="coerce")
    bad = parsed.isna()
    if bad.any() and bad.mean() <= 0.1:
        first = values[bad].iloc[0]
        row = values[bad].index[0]
        raise DataError(
            f"{origin}: column '{name}' is numeric but has {int(bad.sum())} non-numeric value(s) "
            f"(first: {first!r} at row {row}); clean them, or list the column in data.categorical_columns"
        )
    return parsed if not bad.any() else None


def numeric_target(y: np.ndarray, origin: str) -> np.ndarray:
    """Regression targets as float64; text that parses as numbers is converted, anything else refused."""
    if y.dtype.kind in "OUS":
        import pandas as pd

        parsed = numeric_or_junk(pd.Series(y), "target", origin)
        if parsed is None:
            raise DataError(f"{origin}: the target holds text; use task: classification or fix its values")
        y = pd.to_numeric(pd.Series(y), errors="coerce").to_numpy()
    y = y.astype(np.float64)
    if not np.all(np.isfinite(y)):
        bad = int(np.argmax(~np.isfinite(y.reshape(len(y), -1)).any(axis=1)))
        raise DataError(f"{origin}: the target has missing or infinite values (first at row {bad}); drop those rows")
    return y


# -- dates ------------------------------------------------------------------------------------


def parse_dates(column, fmt: str):
    """A column's values as UTC timestamps (a pandas Series); missing and unparsable values are NaT.

    ``fmt`` is a strftime format, or ``mixed`` (each value parsed on its own, slower). Values are
    read as text, so a date stored as the number 20200131 parses like the string.
    """
    import pandas as pd

    missing = column.isna().to_numpy()
    text = [None if m else str(v) for v, m in zip(column.tolist(), missing)]
    with warnings.catch_warnings():  # "could not infer format": expected for the columns that are no dates
        warnings.simplefilter("ignore")
        return pd.to_datetime(pd.Series(text, index=column.index, dtype=object), format=fmt, errors="coerce",
                              utc=True)


def date_format(column, mixed: bool = False) -> tuple[str | None, float]:
    """``(format, share)``: the date format of most of a text column's values and the share of a
    sample of them it parses; ``(None, share)`` when under :data:`DATE_SHARE` of them parse.

    The format is guessed from the values themselves (pandas' ``guess_datetime_format`` on the first
    ones), so every value, at training and at prediction, is parsed the same way. ``mixed``: fall
    back to parsing each value on its own (a column listed in ``data.date_columns``).
    """
    from pandas.tseries.api import guess_datetime_format

    values = column.dropna()
    if len(values) == 0:
        return None, 0.0
    sample = values.iloc[np.linspace(0, len(values) - 1, min(DATE_SAMPLE, len(values))).astype(int)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        guesses = Counter(guess_datetime_format(str(v)) for v in sample.iloc[:20])
    formats = [fmt for fmt, _ in guesses.most_common() if fmt] + (["mixed"] if mixed else [])
    best: tuple[str | None, float] = (None, 0.0)
    for fmt in formats:
        share = float(parse_dates(sample, fmt).notna().mean())
        if share >= DATE_SHARE:
            return fmt, share
        best = max(best, (None, share), key=lambda b: b[1])
    return best


# -- identifiers ------------------------------------------------------------------------------


def refuse_identifiers(frame, numeric: list[str], origin: str, keep: list[str]) -> None:
    """Refuse a numeric column that numbers the rows: whole numbers, one distinct value per row, and
    either consecutive (a permutation of a range: a row index) or named like an id.

    Judged on every row of the source (a random training split of a row index is not consecutive).
    A measurement that happens to be unique (prices, fractions) is not refused: its values are not
    whole, or not consecutive and not named like an id. Columns in ``keep`` (listed in
    ``data.features``) are the user's choice and pass.
    """
    import pandas as pd

    for col in numeric:
        if col in keep:
            continue
        # numeric columns include text that parses as numbers
        values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        n = len(values)
        if n < 3 or not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
            continue
        if len(np.unique(values)) != n:
            continue
        consecutive = values.max() - values.min() + 1 == n
        named = bool(ID_NAMES.search(col.strip()) or ID_SUFFIX.search(col.strip()))
        if consecutive or named:
            why = (f"the whole numbers {values.min():.0f} to {values.max():.0f}, each once" if consecutive
                   else f"named like an id, {n} distinct whole numbers in {n} rows")
            raise DataError(f"{origin}: column '{col}' looks like a row identifier ({why}): nothing learnt from it "
                            f"carries over to new rows; add it to data.drop (or list it in data.features to use "
                            f"it anyway)")
