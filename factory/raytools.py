"""What every Ray driver here shares: connecting, the workers' environment, user errors raised
remotely, Ctrl-C, what the cluster's nodes hold, and one bounded dispatch loop (the production
pool's actors and the Zarr volume build's tasks both run through it)."""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import signal
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

from factory.errors import FactoryError


def ray_worker_env() -> dict[str, str]:
    """Environment variables of every Ray worker that runs models (production actors, training workers).

    glibc returns every large tensor buffer to the kernel (mmap/munmap per allocation) by default; on
    CPU generators that can cost more than the maths (docs/bench/produce.md). Keeping freed memory in
    the heap avoids it."""
    return {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def connect_ray():
    import os

    import ray

    # The driver retrieves every result it needs. When a run stops on an error, the results still in
    # flight are dropped, and Ray would log each one's error again as a traceback after the one line
    # that reports it (an actor refusing a changed bundle fails each shard it held).
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    if not ray.is_initialized():
        check_ray_address(os.environ.get("RAY_ADDRESS", ""))
        # RAY_ADDRESS, when set, points at an existing cluster; otherwise a local one starts. Workers'
        # logs stay in Ray's log folder; failures reach the driver as exceptions.
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    return ray


def check_ray_address(address: str) -> None:
    """An unreachable cluster address (RAY_ADDRESS, `host:port` or `ray://host:port`) is refused within
    factory.network's tries: ray.init itself waits for minutes on a closed port."""
    from factory import network

    target = address.removeprefix("ray://")
    if target in ("", "auto", "local") or ":" not in target or "://" in target:
        return
    host, _, port = target.rpartition(":")
    if port.isdigit():
        network.wait_for_port(host.strip("[]"), int(port), f"RAY_ADDRESS={address}")


@contextlib.contextmanager
def interrupt_flag() -> Iterator[threading.Event]:
    """Ctrl-C (SIGINT) sets a flag that the driver loop checks, instead of raising wherever it lands:
    a KeyboardInterrupt raised while Ray runs a Cython callback on the main thread is printed as
    "Exception ignored" and lost (ray-project/ray#7734), and the run then simply went on to the end.
    Off the main thread (where handlers cannot be set) the flag is never set."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def reraise_user_error(ray):
    """A FactoryError raised in an actor or task reaches the caller as itself (one line naming the
    file and the problem), not wrapped in Ray's remote traceback."""
    try:
        yield
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, FactoryError):
            raise err.cause from None
        raise


def node_resources(ray) -> list[dict[str, float]]:
    """Each live node's total resources: what it can hold, busy or not."""
    return [node["Resources"] for node in ray.nodes() if node["Alive"]]


def fits(resources: Mapping[str, float], need: Mapping[str, float]) -> float:
    """How many actors (or tasks) needing `need` fit into `resources`; one that needs nothing fits
    without bound."""
    # The tolerance absorbs float division (Ray itself counts resources in units of 1e-4).
    return min((int(resources.get(name, 0.0) / amount + 1e-9) for name, amount in need.items() if amount > 0),
               default=math.inf)


def dispatch_bounded(ray, items: Iterable[Any], lanes: Iterable[Any], per_lane: int,
                     submit: Callable[[Any, Any], Any], on_result: Callable[[Any, Any], None],
                     replace: Callable[[Any, Any, Exception], Any] | None = None,
                     ready: Callable[[Any], Any] | None = None, start_timeout_s: float = math.inf,
                     not_started: Callable[[list[Any], int], None] | None = None) -> None:
    """Run every item of `items` remotely, at most `per_lane` at a time on each lane, until no item
    is left and nothing is in flight. `items` is read lazily, as lanes take them, so it may be a
    generator of any length.

    A lane is whatever `submit(lane, item)` starts a remote call on (an actor, or a remote function),
    returning its ObjectRef. Each finished result goes to `on_result(item, result)` on the driver,
    and that lane is refilled. A FactoryError raised remotely is raised here as itself; Ctrl-C raises
    KeyboardInterrupt within half a second. With `replace`, a lane whose actor died gives its items
    back to the front of the queue and `replace(lane, item, error)` returns the lane that takes over
    (or raises; `item` is None for a lane that died before it took one); without it, that error is
    raised.

    With `ready`, a lane (and each replacement) takes items only once the ObjectRef `ready(lane)`
    has resolved: an actor that Ray cannot place yet holds none, so no item waits on it while other
    lanes could run it. Lanes not ready within `start_timeout_s` (given with `not_started`) are dropped
    and handed to `not_started(lanes, running)`, with the number of lanes that do run; with none
    running it must raise, or the items left would wait on nothing."""
    items = iter(items)
    queue: collections.deque = collections.deque()  # items given back by dead lanes, or read ahead
    in_flight: dict[Any, tuple[Any, Any]] = {}  # ObjectRef -> (lane, item)
    starting: dict[Any, tuple[Any, float]] = {}  # ObjectRef of ready(lane) -> (lane, when it was started)
    running: list[Any] = []

    def more() -> bool:
        if not queue:
            queue.extend(itertools.islice(items, 1))
        return bool(queue)

    def fill(lane) -> None:
        while sum(1 for other, _ in in_flight.values() if other is lane) < per_lane and more():
            item = queue.popleft()
            in_flight[submit(lane, item)] = (lane, item)

    def start(lane) -> None:
        if ready is None:
            running.append(lane)
            fill(lane)
        else:
            starting[ready(lane)] = (lane, time.monotonic())

    def lost(lane, item, err: Exception) -> None:
        if replace is None:
            raise err
        if lane in running:
            running.remove(lane)
        for ref, (other, its) in list(in_flight.items()):
            if other is lane:  # its other items are lost with it
                del in_flight[ref]
                queue.appendleft(its)
        start(replace(lane, item, err))

    with interrupt_flag() as interrupted:
        for lane in lanes:
            start(lane)
        while in_flight or (starting and more()):
            if interrupted.is_set():
                raise KeyboardInterrupt
            now = time.monotonic()
            late = [ref for ref, (_, since) in starting.items() if now - since > start_timeout_s]
            if late:
                not_started([starting.pop(ref)[0] for ref in late], len(running))
                continue
            done, _ = ray.wait([*in_flight, *starting], num_returns=1, timeout=0.5)
            if not done:
                continue
            if done[0] in starting:
                lane, _ = starting.pop(done[0])
                try:
                    with reraise_user_error(ray):
                        ray.get(done[0])
                except ray.exceptions.RayActorError as err:
                    lost(lane, None, err)
                    continue
                running.append(lane)
                fill(lane)
                continue
            lane, item = in_flight.pop(done[0])
            try:
                with reraise_user_error(ray):
                    result = ray.get(done[0])
            except ray.exceptions.RayActorError as err:
                queue.appendleft(item)
                lost(lane, item, err)
                continue
            on_result(item, result)
            fill(lane)
