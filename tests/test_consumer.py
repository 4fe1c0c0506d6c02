"""Consumer: items applied in the order put, inline when idle, by its thread otherwise."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from position_distributor.consumer import Consumer

from .waiting import wait_until


class Applied:
    """What a consumer applied: each batch, and the thread that applied it."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.threads: list[str] = []
        self.gate = gate  # when set, apply waits for it (to make items queue up)
        self.lock = threading.Lock()

    def __call__(self, batch: list[int]) -> None:
        if self.gate is not None:
            assert self.gate.wait(10)
        with self.lock:
            self.batches.append(list(batch))
            self.threads.append(threading.current_thread().name)

    def items(self) -> list[int]:
        with self.lock:
            return [item for batch in self.batches for item in batch]


@pytest.fixture
def started(no_thread_leak: None) -> Iterator[list[Consumer[int]]]:
    """Consumers started by a test, closed at its end, before the thread-leak check."""
    consumers: list[Consumer[int]] = []
    yield consumers
    for consumer in consumers:
        consumer.close()


def start(started: list[Consumer[int]], applied: Applied, **kwargs: object) -> Consumer[int]:
    consumer: Consumer[int] = Consumer("consume-test", applied, **kwargs)  # type: ignore[arg-type]
    started.append(consumer)
    consumer.start()
    wait_until(lambda: consumer._inline, 5, "the consumer to be ready")
    return consumer


def in_thread(function: object, *args: object) -> None:
    """Run ``function(*args)`` in a fresh (not main) thread and wait for it."""
    thread = threading.Thread(target=function, args=args, name="producer")  # type: ignore[arg-type]
    thread.start()
    thread.join(10)


def test_an_idle_consumer_lets_a_producer_thread_apply_its_item(
    started: list[Consumer[int]],
) -> None:
    """A lone item put from a thread that is not the main one is applied in that thread."""
    applied = Applied()
    consumer = start(started, applied)
    in_thread(consumer.put, 1)
    assert applied.batches == [[1]] and applied.threads == ["producer"]


def test_a_burst_goes_to_the_thread_even_when_idle(started: list[Consumer[int]]) -> None:
    """An item above max_inline (by its size) is applied by the consumer's thread, so the
    producer can read on meanwhile; one of max_inline is still applied inline."""
    applied = Applied()
    consumer = start(started, applied, size=lambda item: item, max_inline=256)
    in_thread(consumer.put, 256)
    in_thread(consumer.put, 257)
    wait_until(lambda: len(applied.items()) == 2, 5, "both items to be applied")
    assert applied.batches == [[256], [257]]
    assert applied.threads == ["producer", "consume-test"]


def test_the_main_thread_never_applies_inline(
    started: list[Consumer[int]],
) -> None:
    """An item put from the main thread is applied by the consumer's thread (a signal there
    must never interrupt an apply)."""
    applied = Applied()
    consumer = start(started, applied)
    assert threading.current_thread() is threading.main_thread()
    consumer.put(1)
    wait_until(lambda: applied.items() == [1], 5, "the item")
    assert applied.threads == ["consume-test"]


def test_items_queued_behind_a_busy_apply_keep_their_order_and_come_in_one_batch(
    started: list[Consumer[int]],
) -> None:
    """While one item is being applied, later items queue up, then apply in order, together."""
    gate = threading.Event()
    applied = Applied(gate)
    consumer = start(started, applied)
    first = threading.Thread(target=consumer.put, args=(0,), name="producer")
    first.start()
    wait_until(lambda: consumer.pending == 1, 5, "the first item in progress")
    for item in range(1, 6):
        consumer.put(item)  # from the main thread: queued behind the first
    gate.set()
    first.join(10)
    wait_until(lambda: applied.items() == [0, 1, 2, 3, 4, 5], 5, "every item")
    assert applied.batches == [[0], [1, 2, 3, 4, 5]]
    assert consumer.pending == 0


def test_batches_stop_at_max_batch_by_size(
    started: list[Consumer[int]],
) -> None:
    """The thread takes queued items up to ``max_batch``, counted by ``size`` of each."""
    gate = threading.Event()
    applied = Applied(gate)
    consumer = start(started, applied, size=lambda item: 10, max_batch=30)
    for item in range(7):
        consumer.put(item)
    gate.set()
    wait_until(lambda: applied.items() == list(range(7)), 5, "every item")
    assert [len(batch) for batch in applied.batches] == [3, 3, 1]


def test_close_applies_what_is_queued_then_refuses(no_thread_leak: None) -> None:
    """close() lets the thread apply every queued item and end; a put after it is refused."""
    gate = threading.Event()
    applied = Applied(gate)
    consumer: Consumer[int] = Consumer("consume-test", applied)
    consumer.start()
    for item in range(3):
        consumer.put(item)
    gate.set()
    consumer.close()
    assert applied.items() == [0, 1, 2]
    assert consumer.put(3) is False
    consumer.close()  # idempotent


def test_before_returning_false_ends_the_thread_without_applying(no_thread_leak: None) -> None:
    """A ``before`` hook (the recovery wait) that returns False ends the thread at once."""
    applied = Applied()
    consumer: Consumer[int] = Consumer("consume-test", applied)
    consumer.start(before=lambda: False)
    consumer.close()
    assert applied.batches == []


def test_a_failing_apply_is_reported_not_raised(no_thread_leak: None) -> None:
    """An apply that raises calls on_error with the consumer's name, inline or in the thread."""
    errors: list[str] = []

    def fail(batch: list[int]) -> None:
        raise RuntimeError("boom")

    consumer: Consumer[int] = Consumer("consume-test", fail, on_error=errors.append)
    consumer.start()
    wait_until(lambda: consumer._inline, 5, "the consumer to be ready")
    in_thread(consumer.put, 1)  # inline
    consumer.put(2)  # by the thread
    wait_until(lambda: len(errors) == 2, 5, "both failures")
    assert errors == ["consume-test", "consume-test"]
    consumer.close()
