"""Tests of the per-node clock: strictly increasing under a wall clock that steps back."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from hypothesis import given
from hypothesis import strategies as st

from position_distributor.clock import Clock


def wall(readings: list[int]) -> Callable[[], int]:
    """A fake wall clock that returns ``readings`` in turn (injected as ``now_ns``)."""
    it: Iterator[int] = iter(readings)
    return lambda: next(it)


# Golden examples.


def test_follows_the_wall_clock_while_it_moves_forward() -> None:
    """While the wall clock moves forward, timestamps are its readings."""
    clock = Clock(now_ns=wall([100, 200, 300]))
    assert [clock.next(), clock.next(), clock.next()] == [100, 200, 300]
    assert clock.last == 300


def test_wall_clock_stepped_back_or_standing_still() -> None:
    """A wall clock that stands still or steps back gives last + 1, never an older stamp."""
    clock = Clock(now_ns=wall([1000, 1000, 400, 999, 1005]))
    assert [clock.next() for _ in range(5)] == [1000, 1001, 1002, 1003, 1005]


def test_starts_above_the_stored_clock() -> None:
    """A clock restored from the store never stamps at or below the stored value."""
    clock = Clock(last=5000, now_ns=wall([10, 6000]))
    assert clock.last == 5000
    assert clock.next() == 5001
    assert clock.next() == 6000


def test_observe_raises_and_never_lowers() -> None:
    """``observe`` raises the clock to a learnt timestamp; an older one changes nothing."""
    clock = Clock(now_ns=wall([10, 10]))
    clock.observe(50)
    assert clock.last == 50
    clock.observe(20)
    assert clock.last == 50
    assert clock.next() == 51
    clock.observe(51)
    assert clock.next() == 52


def test_default_wall_clock_is_time_ns() -> None:
    """Without an injected wall clock, timestamps are at least the real time in ns."""
    before = time.time_ns()
    stamp = Clock().next()
    assert before <= stamp <= time.time_ns()


# Properties.

steps = st.lists(
    st.one_of(
        st.tuples(st.just("next"), st.integers(min_value=0, max_value=2**62)),
        st.tuples(st.just("observe"), st.integers(min_value=0, max_value=2**62)),
        st.tuples(st.sampled_from(["next_many", "next_none"]), st.integers(0, 2**62)),
    ),
    max_size=50,
)


@given(st.integers(min_value=0, max_value=2**62), steps)
def test_strictly_increasing_above_everything_seen(
    start: int, script: list[tuple[str, int]]
) -> None:
    """Every timestamp, alone or in a batch, exceeds all earlier ones and every observed one,
    and the first of each call is at least now."""
    readings = [value for op, value in script if op in ("next", "next_many")]
    clock = Clock(last=start, now_ns=wall(readings))
    floor = start  # every stamp must exceed this
    for op, value in script:
        if op == "observe":
            clock.observe(value)
            floor = max(floor, value)
            assert clock.last == floor
        elif op == "next_none":
            assert list(clock.next_many(0)) == []
            assert clock.last == floor
        else:
            many = list(clock.next_many(value % 5 + 1)) if op == "next_many" else [clock.next()]
            stamp = many[0]
            assert stamp > floor
            assert stamp >= value
            assert stamp == max(value, floor + 1)
            # A batch: the first stamp as next() gives it, then the nanoseconds after it.
            assert many == list(range(stamp, stamp + len(many)))
            floor = many[-1]
            assert clock.last == floor
