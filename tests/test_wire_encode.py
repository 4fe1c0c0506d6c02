"""wire.encode_positions of a batch whose frames all have one size, written column by column
(``_encode_alike``): byte for byte what ``encode_position`` gives for each position, for
batches built to take that path and for ones just outside it."""

from __future__ import annotations

import math

import hypothesis.strategies as st
from hypothesis import given

from position_distributor.types import Position
from position_distributor.wire import _encode_alike, encode_position, encode_positions

STRATEGIES = ["strategy_1", "s", "x" * 64]
SYMBOL_CHARS = "ABCXYZabz0129._:/-"


@st.composite
def batches(draw: st.DrawFn) -> list[Position]:
    """A batch of one strategy (sometimes two), symbols of one length (sometimes not, or
    not ASCII), timestamps within a window that may cross a 2**21 ns boundary or leave the
    9-byte varints' range, nets that are sometimes zero, negative zero, huge or not finite."""
    count = draw(st.integers(16, 80))
    length = draw(st.integers(1, 40))
    strategy = draw(st.sampled_from(STRATEGIES))
    base = draw(
        st.one_of(
            st.integers(2**56, 2**63 - 2**22),  # (int64: a timestamp stays below 2**63)
            st.sampled_from([2**56 - 40, 2**63 - 300, (2**40 + 1) * 2**21 - 30]),
        )
    )
    symbols = draw(
        st.lists(
            st.text(SYMBOL_CHARS, min_size=length, max_size=length),
            min_size=count,
            max_size=count,
        )
    )
    nets = draw(
        st.lists(
            st.one_of(
                st.floats().filter(bool),
                st.sampled_from([1.0, -2.5, 1e300, 5e-324, -1e-300, math.inf, math.nan]),
            ),
            min_size=count,
            max_size=count,
        )
    )
    steps = draw(st.lists(st.integers(0, 3), min_size=count, max_size=count))
    positions = []
    stamp = base
    for symbol, net, step in zip(symbols, nets, steps, strict=True):
        stamp += step
        positions.append(Position(strategy, symbol, net, stamp))
    # Now and then, one position unlike the others.
    odd = draw(st.integers(0, 6))
    if odd == 1:
        index = draw(st.integers(0, count - 1))
        positions[index] = positions[index]._replace(symbol=positions[index].symbol + "Q")
    elif odd == 2:
        index = draw(st.integers(0, count - 1))
        positions[index] = positions[index]._replace(strategy="other")
    elif odd == 3:
        index = draw(st.integers(0, count - 1))
        positions[index] = positions[index]._replace(symbol="é" * length)
    elif odd == 4:
        index = draw(st.integers(0, count - 1))
        positions[index] = positions[index]._replace(
            net_position=draw(st.sampled_from([0.0, -0.0]))
        )
    return positions


@given(batches())
def test_a_batch_is_encoded_as_each_of_its_positions_would_be(positions: list[Position]) -> None:
    """Whichever path a batch takes, its bytes are its positions' frames, in order."""
    expected = b"".join(map(encode_position, positions))
    assert encode_positions(positions) == expected
    alike = _encode_alike(positions)
    assert alike is None or alike == expected


def test_the_common_batch_takes_the_column_path() -> None:
    """A batch stamped by one clock reading, one strategy, symbols of one length, no zero
    net: written column by column (not None), and the same bytes."""
    start = 1_742_308_549_773_254_000
    positions = [
        Position("strategy_1", f"U{i:06d}", float(i % 7 + 1) * -1.5, start + i) for i in range(500)
    ]
    encode_position(positions[0])  # the strategy's prefix is learnt by a first frame
    assert _encode_alike(positions) == b"".join(map(encode_position, positions))


def test_batches_outside_the_column_path_are_declined() -> None:
    """Two symbol lengths, a zero net, or timestamps on both sides of a 2**21 ns boundary:
    None (the general loop encodes them)."""
    start = (2**40 + 1) * 2**21 - 10
    positions = [Position("strategy_1", f"S{i:03d}", 1.0, start + i) for i in range(5)]
    encode_position(positions[0])
    assert _encode_alike(positions) is not None
    assert _encode_alike([*positions, Position("strategy_1", "S1", 1.0, start + 6)]) is None
    assert _encode_alike([*positions, Position("strategy_1", "S999", 0.0, start + 6)]) is None
    assert _encode_alike([*positions, Position("strategy_1", "S999", 1.0, start + 20)]) is None
