"""Live progress of one training attempt: step, loss (last and smoothed) and an honest ETA.

The ETA comes from our own clock over the steps this attempt has trained (model loading, latent
caching and a resumed run's skipped steps are not steps), and is withheld until enough steps have
been measured for the rate to mean something. Kohya's own bar ETA is not used: it is absent
before the first step and counts only the steps since its bar appeared.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

ETA_MIN_STEPS = 20
SMOOTHING = 0.9  # exponential moving average with bias correction (as TensorBoard smooths curves)


@dataclass
class ProgressTracker:
    total: int
    step: int = 0
    loss_last: float | None = None
    loss_smoothed: float | None = None
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    _first: tuple[float, int] | None = field(default=None, repr=False)
    _ema: float = field(default=0.0, repr=False)
    _ema_n: int = field(default=0, repr=False)
    _last_time: float | None = field(default=None, repr=False)

    def update(self, step: int, total: int | None = None, loss: float | None = None) -> None:
        now = self.clock()
        if total:
            self.total = total
        if self._first is None:
            # The first report marks the start of measured training (kohya's 0/N bar, or the first step).
            self._first = (now, step)
        self.step = step
        self._last_time = now
        if loss is not None:
            self.loss_last = loss
            if math.isfinite(loss):
                self._ema = SMOOTHING * self._ema + (1 - SMOOTHING) * loss
                self._ema_n += 1
                self.loss_smoothed = self._ema / (1 - SMOOTHING ** self._ema_n)

    @property
    def measured_steps(self) -> int:
        return 0 if self._first is None else self.step - self._first[1]

    @property
    def seconds_per_step(self) -> float | None:
        if self._first is None or self._last_time is None or self.measured_steps < ETA_MIN_STEPS:
            return None
        return (self._last_time - self._first[0]) / self.measured_steps

    @property
    def eta_seconds(self) -> float | None:
        rate = self.seconds_per_step
        if rate is None:
            return None
        return max(0.0, rate * (self.total - self.step))
