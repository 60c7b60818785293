"""The circuit breaker on a fake clock."""

from __future__ import annotations

from pm_registry.breaker import CircuitBreaker, State


def _state(breaker: CircuitBreaker) -> State:
    return breaker.state


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(failures=3, reset_seconds=10, clock=_Clock())
    for _ in range(2):
        assert breaker.try_acquire()
        breaker.record_failure()
    breaker.record_success()  # a success in between resets the count
    for _ in range(2):
        breaker.record_failure()
    assert _state(breaker) is State.CLOSED
    breaker.record_failure()
    assert _state(breaker) is State.OPEN
    assert not breaker.try_acquire()


def test_half_open_lets_one_probe_through_and_closes_on_success() -> None:
    clock = _Clock()
    breaker = CircuitBreaker(failures=1, reset_seconds=10, clock=clock)
    breaker.record_failure()
    assert breaker.retry_after() == 10
    clock.now += 9.5
    assert not breaker.try_acquire()
    clock.now += 0.5
    assert _state(breaker) is State.HALF_OPEN
    assert breaker.try_acquire()
    assert not breaker.try_acquire()  # only one probe in flight
    breaker.record_success()
    assert _state(breaker) is State.CLOSED
    assert breaker.consecutive_failures == 0


def test_a_failed_probe_opens_the_circuit_for_another_period() -> None:
    clock = _Clock()
    breaker = CircuitBreaker(failures=5, reset_seconds=10, clock=clock)
    for _ in range(5):
        breaker.record_failure()
    clock.now += 10
    assert breaker.try_acquire()
    breaker.record_failure()
    assert _state(breaker) is State.OPEN
    assert breaker.retry_after() == 10


def test_a_probe_without_verdict_frees_the_slot() -> None:
    clock = _Clock()
    breaker = CircuitBreaker(failures=1, reset_seconds=1, clock=clock)
    breaker.record_failure()
    clock.now += 1
    assert breaker.try_acquire()
    breaker.release()
    assert breaker.try_acquire()
