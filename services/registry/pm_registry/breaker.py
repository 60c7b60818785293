"""A circuit breaker per MCP server.

Closed: calls go through; `failures` consecutive failures open it. Open: calls are refused at
once until `reset_seconds` have passed. Half-open: exactly one probe call goes through; its
success closes the circuit, its failure opens it again for another `reset_seconds`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum


class State(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Consecutive-failure breaker with a single half-open probe."""

    def __init__(self, failures: int, reset_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = failures
        self._reset = reset_seconds
        self._clock = clock
        self._state = State.CLOSED
        self._opened_at = 0.0
        self._probing = False
        self.consecutive_failures = 0

    @property
    def state(self) -> State:
        """The state now (an open circuit whose reset time has passed reads as half-open)."""
        if self._state is State.OPEN and self._clock() - self._opened_at >= self._reset:
            return State.HALF_OPEN
        return self._state

    def retry_after(self) -> float:
        """Seconds until an open circuit lets a probe through (0 when it would now)."""
        if self._state is not State.OPEN:
            return 0.0
        return max(0.0, self._reset - (self._clock() - self._opened_at))

    def try_acquire(self) -> bool:
        """Whether a call may go through now; in half-open only one probe is in flight."""
        state = self.state
        if state is State.CLOSED:
            return True
        if state is State.OPEN or self._probing:
            return False
        self._state = State.HALF_OPEN
        self._probing = True
        return True

    def record_success(self) -> None:
        self._state = State.CLOSED
        self._probing = False
        self.consecutive_failures = 0

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        if self._state is State.HALF_OPEN or self.consecutive_failures >= self._threshold:
            self._state = State.OPEN
            self._opened_at = self._clock()
        self._probing = False

    def release(self) -> None:
        """A call that went through ended without a verdict on the server (e.g. it was cancelled)."""
        self._probing = False
