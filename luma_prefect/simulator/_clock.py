"""The simulated clock that every generation's state is computed from."""

from __future__ import annotations

import math
import time

__all__ = ["SimClock"]


class SimClock:
    """Simulated seconds since start: real time plus `advance` offsets, or offsets only.

    Not thread-safe on its own: `SimulatorState` reads it under its lock.
    """

    def __init__(self, manual: bool) -> None:
        self._manual = manual
        self._start = time.monotonic()
        self._offset = 0.0

    def now(self) -> float:
        base = 0.0 if self._manual else time.monotonic() - self._start
        return base + self._offset

    def advance(self, seconds: float) -> float:
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError("the simulated clock only moves forward: seconds must be >= 0")
        self._offset += seconds
        return self.now()
