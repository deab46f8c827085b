"""Ranking measured candidates with confidence: who is ahead by more than the noise, and when
to measure the leaders again. Pure functions over samples (lower is better: seconds).

A candidate is *ahead* of another when both have at least `MIN_SAMPLES` samples, their
interquartile ranges do not overlap, and the medians differ by more than `TIE_FRACTION`; with
fewer samples there is no interval, so only a gap larger than `UNKNOWN_NOISE` counts. Otherwise
the two are *tied*, and the caller keeps the simpler one (`simpler`: a sort key).
`refine_targets` names the candidates to measure once more (the two leaders, until one is ahead
or both have `MAX_SAMPLES`); `decide` names the winner and the evidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable, Mapping, Sequence, TypeVar

from .discipline import Spread, spread

K = TypeVar("K", bound=Hashable)
MIN_SAMPLES = 3  # fewer give no interval to compare
MAX_SAMPLES = 30  # two leaders that are still tied after this many are tied for good
TIE_FRACTION = 0.02  # medians within 2% are a tie even when the intervals happen not to overlap
# Single runs on a busy 2-core laptop scattered +-30% (issue 17): without an interval, only a
# larger gap is taken as real.
UNKNOWN_NOISE = 0.3


def ahead(lead: Spread, other: Spread, min_samples: int = MIN_SAMPLES,
          tie_fraction: float = TIE_FRACTION) -> bool:
    """Whether `lead` (lower is better) beats `other` by more than the noise."""
    if lead.repeats < min_samples or other.repeats < min_samples:
        return lead.median < other.median * (1 - UNKNOWN_NOISE)
    return lead.high < other.low and lead.median < other.median * (1 - tie_fraction)


def _ordered(samples: Mapping[K, Sequence[float]]) -> list[tuple[K, Spread]]:
    measured = [(k, spread(v, "s")) for k, v in samples.items() if v]
    return sorted(measured, key=lambda kv: kv[1].median)


def refine_targets(samples: Mapping[K, Sequence[float]], min_samples: int = MIN_SAMPLES,
                   max_samples: int = MAX_SAMPLES) -> list[K]:
    """The candidates to measure once more: the leader and the runner-up until both have an
    interval and one is ahead (each at most `max_samples`); a lone one until `min_samples`."""
    order = _ordered(samples)
    if not order:
        return []
    if len(order) == 1:
        (key, s), = order
        return [key] if s.repeats < min_samples else []
    (lead, a), (runner, b) = order[0], order[1]
    if min(a.repeats, b.repeats) >= min_samples and ahead(a, b, min_samples):
        return []
    return [k for k, s in ((lead, a), (runner, b)) if s.repeats < max_samples]


@dataclass(frozen=True)
class Decision:
    """The winner, the fastest by median, those tied with it, and the spreads behind them."""

    best: Hashable
    fastest: Hashable
    tied: tuple  # candidates not beaten by the fastest by more than the noise
    spreads: dict  # candidate -> Spread of its samples (s)

    @property
    def separated(self) -> bool:
        return not self.tied


def decide(samples: Mapping[K, Sequence[float]], simpler: Callable[[K], object],
           min_samples: int = MIN_SAMPLES) -> Decision | None:
    """The fastest candidate if it is ahead of every other; else the simplest of it and those it
    does not beat (None when nothing was measured)."""
    order = _ordered(samples)
    if not order:
        return None
    fastest, lead = order[0]
    tied = tuple(k for k, s in order[1:] if not ahead(lead, s, min_samples))
    best = min((fastest, *tied), key=simpler)
    return Decision(best, fastest, tied, dict(order))
