"""The Ray driver helpers: the bounded dispatch loop on a real local Ray instance, and Ctrl-C as a flag."""

import collections
import os
import signal
import time

import pytest

from factory.errors import BadInputError
from factory.raytools import dispatch_bounded, interrupt_flag


def test_dispatch_keeps_at_most_the_bound_in_flight_and_hands_over_every_result(ray_local):
    square = ray_local.remote(lambda x: x * x)
    started, results = [], {}

    def submit(lane, item):
        assert len(started) - len(results) < 3  # in flight before this one
        started.append(item)
        return lane.remote(item)

    dispatch_bounded(ray_local, collections.deque(range(20)), [square], 3, submit,
                     lambda item, result: results.__setitem__(item, result))
    assert started == list(range(20)) and results == {x: x * x for x in range(20)}


def test_dispatch_reads_its_items_only_as_lanes_take_them(ray_local):
    square = ray_local.remote(lambda x: x * x)
    read, results = [], {}

    def items():  # a plan of any length: nothing of it is held ahead of the lanes
        for x in range(30):
            read.append(x)
            yield x

    def submit(lane, item):
        assert len(read) - len(results) <= 3  # this item and the two in flight: none read ahead
        return lane.remote(item)

    dispatch_bounded(ray_local, items(), [square], 3, submit, lambda item, result: results.__setitem__(item, result))
    assert results == {x: x * x for x in range(30)}


def test_dispatch_gives_nothing_to_a_lane_that_cannot_start(ray_local):
    class Squarer:  # defined here so that Ray ships it by value: workers cannot import this test module
        def square(self, x: int) -> int:
            return x * x

    actor_class = ray_local.remote(Squarer)
    unplaceable = actor_class.options(num_cpus=3).remote()  # ray_local has 2 CPUs
    placed = actor_class.options(num_cpus=1).remote()
    results = {}
    try:
        dispatch_bounded(ray_local, range(10), [unplaceable, placed], 2, lambda lane, item: lane.square.remote(item),
                         results.__setitem__, ready=lambda lane: lane.__ray_ready__.remote())
    finally:
        ray_local.kill(unplaceable)
        ray_local.kill(placed)
    assert results == {x: x * x for x in range(10)}


def test_dispatch_raises_a_remote_user_error_as_itself(ray_local):
    def check(x):
        if x == 2:
            raise BadInputError(f"item-{x}", "unreadable")
        return x

    with pytest.raises(BadInputError, match="item-2: unreadable"):
        dispatch_bounded(ray_local, collections.deque(range(4)), [ray_local.remote(check)], 2,
                         lambda lane, item: lane.remote(item), lambda item, result: None)


def test_dispatch_gives_a_dead_actors_items_to_its_replacement(ray_local):
    class Squarer:  # defined here so that Ray ships it by value: workers cannot import this test module
        def __init__(self, doomed: bool):
            self.doomed = doomed

        def square(self, x: int) -> int:
            if self.doomed and x == 3:
                os._exit(1)
            return x * x

    actor_class = ray_local.remote(Squarer)
    replaced, results = [], {}

    def replace(lane, item, err):
        replaced.append(item)
        return actor_class.remote(doomed=False)

    dispatch_bounded(ray_local, collections.deque(range(8)), [actor_class.remote(doomed=True)], 2,
                     lambda lane, item: lane.square.remote(item), results.__setitem__, replace)
    assert len(replaced) == 1 and replaced[0] in (3, 4)
    assert results == {x: x * x for x in range(8)}


def test_interrupt_flag_turns_sigint_into_a_flag_and_restores_the_handler():
    before = signal.getsignal(signal.SIGINT)
    with interrupt_flag() as interrupted:
        assert not interrupted.is_set()
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: the handler only sets the flag
        deadline = time.monotonic() + 5
        while not interrupted.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert interrupted.is_set()
    assert signal.getsignal(signal.SIGINT) is before
