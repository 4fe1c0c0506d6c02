"""Tests of Throttle: the first event of a key is said, then one per interval with a count."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from position_distributor.throttle import Throttle


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_first_event_is_said_then_one_per_interval_with_the_count() -> None:
    """A key's first event is said; the next ones within the interval are counted, and the
    first after it is said with that count."""
    clock = FakeClock()
    throttle = Throttle(60, now=clock)
    assert throttle.admit("a") == 0
    assert [throttle.admit("a") for _ in range(5)] == [None] * 5
    assert throttle.admit("b") == 0
    clock.now = 60.0
    assert throttle.admit("a") == 5
    assert throttle.admit("a") is None
    assert throttle.unsaid() == [("a", 1)]
    assert throttle.unsaid() == []


def test_keys_are_bounded() -> None:
    """However many distinct keys come, at most max_keys are remembered."""
    throttle = Throttle(60, max_keys=8, now=FakeClock())
    for key in range(1000):
        assert throttle.admit(key) == 0
    assert len(throttle._keys) <= 8


@given(st.lists(st.tuples(st.integers(0, 3), st.floats(0, 30)), max_size=200))
def test_nothing_is_lost(events: list[tuple[int, float]]) -> None:
    """Every event is either said, counted in a later said line, or counted by unsaid()."""
    clock = FakeClock()
    throttle = Throttle(10, now=clock)
    told = 0
    for key, step in events:
        clock.now += step
        unsaid = throttle.admit(key)
        if unsaid is not None:
            told += 1 + unsaid
    told += sum(count for _, count in throttle.unsaid())
    assert told == len(events)
