"""EventDispatcher: handlers per event, called in subscription order, failures contained."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from position_distributor.dispatcher import Event, EventDispatcher

from .waiting import capture_logs


def test_handlers_run_in_subscription_order_with_the_fired_arguments() -> None:
    """Every handler of an event runs once per fire, in the order subscribed, with its args."""
    dispatcher = EventDispatcher()
    calls: list[tuple[str, tuple[Any, ...]]] = []
    dispatcher.subscribe(Event.MESSAGE, lambda *args: calls.append(("first", args)))
    dispatcher.subscribe(Event.MESSAGE, lambda *args: calls.append(("second", args)))
    dispatcher.subscribe(Event.MESSAGE, lambda *args: calls.append(("third", args)))

    dispatcher.fire(Event.MESSAGE, "conn", ["m1", "m2"])

    assert calls == [
        ("first", ("conn", ["m1", "m2"])),
        ("second", ("conn", ["m1", "m2"])),
        ("third", ("conn", ["m1", "m2"])),
    ]


def test_fire_calls_only_the_handlers_of_that_event() -> None:
    """Firing one event leaves the handlers of every other event uncalled."""
    dispatcher = EventDispatcher()
    calls: list[Event] = []
    for event in Event:
        dispatcher.subscribe(event, lambda *args, event=event: calls.append(event))

    dispatcher.fire(Event.CLOSED, "conn", "reason")
    dispatcher.fire(Event.ACCEPTED, "conn")

    assert calls == [Event.CLOSED, Event.ACCEPTED]


def test_fire_without_handlers_does_nothing() -> None:
    """An event nobody subscribed to fires without error."""
    EventDispatcher().fire(Event.CONNECTED, "conn")


def test_a_failing_handler_is_logged_and_the_others_still_run() -> None:
    """A handler that raises is logged with its name and traceback; later handlers still run."""
    dispatcher = EventDispatcher()
    calls: list[str] = []

    def broken(conn: str) -> None:
        raise RuntimeError("handler bug")

    dispatcher.subscribe(Event.ACCEPTED, lambda conn: calls.append("before"))
    dispatcher.subscribe(Event.ACCEPTED, broken)
    dispatcher.subscribe(Event.ACCEPTED, lambda conn: calls.append("after"))

    with capture_logs() as logs:
        dispatcher.fire(Event.ACCEPTED, "conn")

    assert calls == ["before", "after"]
    errors = logs.lines_with("failed")
    assert len(errors) == 1
    assert errors[0].startswith("ERROR ")
    assert "broken" in errors[0] and "accepted" in errors[0]


def test_unsubscribe_stops_only_that_handler() -> None:
    """After unsubscribe, the handler is no longer called and the other handlers still are."""
    dispatcher = EventDispatcher()
    calls: list[str] = []

    def one(conn: str) -> None:
        calls.append("one")

    def two(conn: str) -> None:
        calls.append("two")

    dispatcher.subscribe(Event.CONNECTED, one)
    dispatcher.subscribe(Event.CONNECTED, two)
    dispatcher.fire(Event.CONNECTED, "conn")
    dispatcher.unsubscribe(Event.CONNECTED, one)
    dispatcher.fire(Event.CONNECTED, "conn")

    assert calls == ["one", "two", "two"]


def test_unsubscribing_an_unknown_handler_is_harmless() -> None:
    """Unsubscribing a handler that was never subscribed leaves the others in place."""
    dispatcher = EventDispatcher()
    calls: list[str] = []
    dispatcher.subscribe(Event.CLOSED, lambda conn, reason: calls.append(reason))

    dispatcher.unsubscribe(Event.CLOSED, print)
    dispatcher.fire(Event.CLOSED, "conn", "gone")

    assert calls == ["gone"]


def test_a_handler_subscribed_during_a_fire_runs_from_the_next_fire() -> None:
    """Subscribing from inside a handler does not disturb the fire in progress."""
    dispatcher = EventDispatcher()
    calls: list[str] = []

    def late(conn: str) -> None:
        calls.append("late")

    def subscriber(conn: str) -> None:
        calls.append("subscriber")
        dispatcher.subscribe(Event.ACCEPTED, late)

    dispatcher.subscribe(Event.ACCEPTED, subscriber)
    dispatcher.fire(Event.ACCEPTED, "conn")
    assert calls == ["subscriber"]

    dispatcher.fire(Event.ACCEPTED, "conn")
    assert calls == ["subscriber", "subscriber", "late"]


@pytest.mark.usefixtures("no_thread_leak")
def test_concurrent_subscribes_are_all_kept() -> None:
    """Handlers subscribed from many threads at once are all registered, none lost."""
    dispatcher = EventDispatcher()
    calls: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def subscribe_many(worker: int) -> None:
        start.wait()
        for i in range(200):

            def handler(conn: str, value: int = worker * 1000 + i) -> None:
                with lock:
                    calls.append(value)

            dispatcher.subscribe(Event.MESSAGE, handler)

    threads = [threading.Thread(target=subscribe_many, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    dispatcher.fire(Event.MESSAGE, "conn")
    assert sorted(calls) == sorted(w * 1000 + i for w in range(8) for i in range(200))
