"""Projecting an enriched series onto a view: the labels it keeps, tagged ``view="<name>"``."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from enrichproxy.config.schema import ViewConfig
from enrichproxy.config.selector import Selector
from enrichproxy.model import METRIC_NAME_LABEL, VIEW_LABEL, Labels

# Histogram buckets are only summable bucket by bucket: `le` survives every view.
BUCKET_LABEL = "le"
# Summary quantiles cannot be summed across series (the 0.99 quantile of two pods is not the sum
# of theirs), so they are left out of views; `_sum` and `_count` still aggregate.
QUANTILE_LABEL = "quantile"


class Skip(enum.Enum):
    NOT_MATCHED = "not_matched"
    UNSUMMABLE = "unsummable_quantile"


@dataclass(frozen=True)
class View:
    name: str
    keep: frozenset[str]
    match: Selector | None

    @classmethod
    def from_config(cls, config: ViewConfig) -> View:
        kept = {METRIC_NAME_LABEL, BUCKET_LABEL, *config.keep}
        return cls(config.name, frozenset(kept), config.match)

    def project(self, labels: Labels) -> Labels | Skip:
        """The output label set of ``labels`` in this view, or why it is not in the view."""
        if self.match is not None and not self.match.matches(labels):
            return Skip.NOT_MATCHED
        keep = self.keep
        projected = [(name, value) for name, value in labels if name in keep]
        if any(name == QUANTILE_LABEL for name, _ in labels):
            return Skip.UNSUMMABLE
        projected.append((VIEW_LABEL, self.name))
        projected.sort()
        return tuple(projected)
