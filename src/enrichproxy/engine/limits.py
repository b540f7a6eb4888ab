"""The request-shape limits of ``limits:``, checked where they cost least.

The series count is one ``len`` per request. Label limits depend only on a series' labels, so
they are checked when its plan is built (a series cache miss), never again for a series already
admitted. A violation raises ``LimitExceeded`` before any sample of the request is applied; the
sender gets 400 with the limit's name, and the proxy counts it by limit.

Pure: values in, an exception or nothing out.
"""

from __future__ import annotations

from enrichproxy.config.schema import LimitsConfig
from enrichproxy.errors import LimitExceeded
from enrichproxy.model import METRIC_NAME_LABEL, Labels

SERIES_PER_REQUEST = "max_series_per_request"
LABELS_PER_SERIES = "max_labels_per_series"
LABEL_NAME_LENGTH = "max_label_name_length"
LABEL_VALUE_LENGTH = "max_label_value_length"
ALL_LIMITS = (SERIES_PER_REQUEST, LABELS_PER_SERIES, LABEL_NAME_LENGTH, LABEL_VALUE_LENGTH)
# How much of an over-long name an answer quotes: enough to find it, not the whole of it.
QUOTED_CHARS = 64


def _quoted(text: str) -> str:
    if len(text) <= QUOTED_CHARS:
        return repr(text)
    return repr(text[:QUOTED_CHARS]) + "..."


def check_series_count(count: int, limits: LimitsConfig) -> None:
    limit = limits.max_series_per_request
    if limit and count > limit:
        raise LimitExceeded(
            SERIES_PER_REQUEST, f"the request has {count} series, at most {limit} are accepted"
        )


def check_labels(labels: Labels, limits: LimitsConfig) -> None:
    """Raise LimitExceeded for the first limit ``labels`` (one input series) exceeds.

    Lengths are in bytes of UTF-8, as Prometheus counts them.
    """
    metric = _quoted(dict(labels).get(METRIC_NAME_LABEL, ""))
    most_labels = limits.max_labels_per_series
    if most_labels and len(labels) > most_labels:
        raise LimitExceeded(
            LABELS_PER_SERIES,
            f"series {metric} has {len(labels)} labels, at most {most_labels} are accepted",
        )
    name_limit = limits.max_label_name_length
    value_limit = limits.max_label_value_length
    for name, value in labels:
        # len(str) <= bytes <= 4 * len(str): encode only when it can make a difference.
        if name_limit and len(name) * 4 > name_limit and len(name.encode()) > name_limit:
            raise LimitExceeded(
                LABEL_NAME_LENGTH,
                f"series {metric} has a label name of {len(name.encode())} bytes"
                f" ({_quoted(name)}), at most {name_limit} are accepted",
            )
        if value_limit and len(value) * 4 > value_limit and len(value.encode()) > value_limit:
            raise LimitExceeded(
                LABEL_VALUE_LENGTH,
                f"series {metric} has a {len(value.encode())}-byte value of label"
                f" {_quoted(name)}, at most {value_limit} are accepted",
            )
