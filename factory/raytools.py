"""What every Ray driver here shares: connecting, the workers' environment, user errors raised
remotely, Ctrl-C, and one bounded dispatch loop (the production pool's actors and the Zarr volume
build's tasks both run through it)."""

from __future__ import annotations

import collections
import contextlib
import signal
import threading
from typing import Any, Callable, Iterable, Iterator

from factory.errors import FactoryError


def ray_worker_env() -> dict[str, str]:
    """Environment variables of every Ray worker that runs models (production actors, training workers).

    glibc returns every large tensor buffer to the kernel (mmap/munmap per allocation) by default; on
    CPU generators that can cost more than the maths (docs/bench/produce.md). Keeping freed memory in
    the heap avoids it."""
    return {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def connect_ray():
    import ray

    if not ray.is_initialized():
        # RAY_ADDRESS, when set, points at an existing cluster; otherwise a local one starts. Workers'
        # logs stay in Ray's log folder; failures reach the driver as exceptions.
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    return ray


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


def dispatch_bounded(ray, queue: collections.deque, lanes: Iterable[Any], per_lane: int,
                     submit: Callable[[Any, Any], Any], on_result: Callable[[Any, Any], None],
                     replace: Callable[[Any, Any, Exception], Any] | None = None) -> None:
    """Run every item of `queue` remotely, at most `per_lane` at a time on each lane, until the queue
    is empty and nothing is in flight.

    A lane is whatever `submit(lane, item)` starts a remote call on (an actor, or a remote function),
    returning its ObjectRef. Each finished result goes to `on_result(item, result)` on the driver,
    and that lane is refilled. A FactoryError raised remotely is raised here as itself; Ctrl-C raises
    KeyboardInterrupt within half a second. With `replace`, a lane whose actor died gives its items
    back to the front of the queue and `replace(lane, item, error)` returns the lane that takes over
    (or raises); without it, that error is raised."""
    in_flight: dict[Any, tuple[Any, Any]] = {}  # ObjectRef -> (lane, item)

    def fill(lane) -> None:
        while queue and sum(1 for other, _ in in_flight.values() if other is lane) < per_lane:
            item = queue.popleft()
            in_flight[submit(lane, item)] = (lane, item)

    with interrupt_flag() as interrupted:
        for lane in lanes:
            fill(lane)
        while in_flight:
            if interrupted.is_set():
                raise KeyboardInterrupt
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=0.5)
            if not done:
                continue
            lane, item = in_flight.pop(done[0])
            try:
                with reraise_user_error(ray):
                    result = ray.get(done[0])
            except ray.exceptions.RayActorError as err:
                if replace is None:
                    raise
                queue.appendleft(item)
                for ref, (other, lost) in list(in_flight.items()):
                    if other is lane:  # its other items are lost with it
                        del in_flight[ref]
                        queue.appendleft(lost)
                fill(replace(lane, item, err))
                continue
            on_result(item, result)
            fill(lane)
