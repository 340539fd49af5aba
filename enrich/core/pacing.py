"""Acks first: how much background work may run, from how late the event loop is.

One trio process answers webhooks and runs the pipeline. Twilio's answer must come in
milliseconds; a message's processing has minutes. When the loop is congested (a task
that asked to wake in 10 ms wakes much later), every webhook waits behind pipeline work,
so the pipeline's concurrency is cut multiplicatively; when the loop is on time it grows
back one slot at a time (AIMD, as TCP does with its window). The backlog waits in
PostgreSQL, durable, and is worked off as soon as the webhook load allows.

This is the single-process answer, steered by the loop's own lag. A ``--role worker``
process has no acks of its own: it runs the same AIMD on the ack pressure the web
processes publish (``enrich.pipeline.pressure``, PROCESSING_TARGET_ACK_MS), at a lower CPU
priority too.

Pure: the trio shell (``enrich.pipeline.runner``) measures the lag and applies the limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["AdaptiveLimit"]


@dataclass(slots=True)
class AdaptiveLimit:
    """AIMD between ``minimum`` and ``maximum`` steered by measured loop lag (seconds).

    A limit of 0 pauses new work until the loop is on time again: when webhooks alone
    keep the loop late, processing more would only make every answer later.

    ``target_lag_s <= 0`` disables pacing: the limit stays at ``maximum``.
    """

    minimum: int
    maximum: int
    target_lag_s: float
    decrease: float = 0.5
    limit: int = 0

    def __post_init__(self) -> None:
        if not (0 <= self.minimum <= self.maximum and self.maximum >= 1):
            raise ValueError("need 0 <= minimum <= maximum and maximum >= 1")
        if not 0 < self.decrease < 1:
            raise ValueError("decrease must be between 0 and 1")
        self.limit = self.maximum if self.limit == 0 else self.limit

    @property
    def enabled(self) -> bool:
        return self.target_lag_s > 0

    def update(self, lag_s: float) -> int:
        """Take one lag sample; return the new limit."""
        if not self.enabled:
            self.limit = self.maximum
        elif lag_s > self.target_lag_s:
            self.limit = max(self.minimum, math.floor(self.limit * self.decrease))
        elif lag_s < self.target_lag_s / 2:
            self.limit = min(self.maximum, self.limit + 1)
        return self.limit
