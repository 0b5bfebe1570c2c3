"""How long a network call may wait, and how often it is tried again: one place for every S3 call
(botocore under s3fs) and for connecting to a Ray cluster. docs/network.md lists the settings.

Each setting is an environment variable, read when a connection is made, so a job's environment (a
pod's env, `ray job submit --runtime-env`) sets it for the driver and its workers alike. The defaults
ride out an object store or a Ray head that restarts (a minute or two) and give up after that, with one
line naming the endpoint, instead of waiting forever.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, fields
from typing import Callable, Mapping, TypeVar

from factory.errors import BadInputError

T = TypeVar("T")


@dataclass(frozen=True)
class NetworkSettings:
    connect_timeout_s: float = 10.0  # to open one connection
    read_timeout_s: float = 60.0  # for one response to start or go on arriving
    attempts: int = 5  # tries of one call, the first included
    backoff_s: float = 1.0  # the wait before the second try; it doubles up to backoff_max_s
    backoff_max_s: float = 20.0


VARIABLES = {
    "connect_timeout_s": "MEDSYNTH_CONNECT_TIMEOUT_S",
    "read_timeout_s": "MEDSYNTH_READ_TIMEOUT_S",
    "attempts": "MEDSYNTH_NETWORK_ATTEMPTS",
    "backoff_s": "MEDSYNTH_BACKOFF_S",
    "backoff_max_s": "MEDSYNTH_BACKOFF_MAX_S",
}


def settings(environ: Mapping[str, str] | None = None) -> NetworkSettings:
    """The settings in force: each MEDSYNTH_* variable that is set, else AWS_MAX_ATTEMPTS for attempts
    (botocore's own variable), else the defaults. A value that is not a positive number is refused,
    naming the variable."""
    env = os.environ if environ is None else environ
    values = {}
    for field in fields(NetworkSettings):
        name = VARIABLES[field.name]
        text = env.get(name) or (env.get("AWS_MAX_ATTEMPTS") if field.name == "attempts" else None)
        if not text:
            continue
        kind = int if field.name == "attempts" else float
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise BadInputError(name, f"must be a positive {'integer' if kind is int else 'number'}, got {text!r}")
        values[field.name] = value
    return NetworkSettings(**values)


def botocore_config(net: NetworkSettings | None = None) -> dict:
    """botocore Config keywords: its timeouts, and its 'standard' retry mode (exponential backoff with
    jitter, on connection errors, timeouts, throttling and 5xx answers) for `attempts` tries."""
    net = net or settings()
    return {"connect_timeout": net.connect_timeout_s, "read_timeout": net.read_timeout_s,
            "retries": {"max_attempts": net.attempts, "mode": "standard"}}


def without_expect_continue() -> None:
    """Stop botocore from sending `Expect: 100-continue` on S3 uploads (in sessions made from now on).
    aiohttp, under s3fs, waits for the interim "100 Continue" before it sends the body, and no timeout
    covers that wait: an endpoint that accepts the connection and never answers hung every write forever
    (reads timed out). Without the header the read timeout bounds the wait for the answer. The header only
    spares sending a body the store would refuse, which retries make up for."""
    from botocore import handlers

    handlers.BUILTIN_HANDLERS[:] = [spec for spec in handlers.BUILTIN_HANDLERS
                                    if spec[1] is not handlers.add_expect_header]


def delays(net: NetworkSettings | None = None) -> list[float]:
    """The waits between tries: backoff_s doubling up to backoff_max_s, one fewer than attempts."""
    net = net or settings()
    return [min(net.backoff_s * 2**i, net.backoff_max_s) for i in range(net.attempts - 1)]


def retry(call: Callable[[], T], give_up: Callable[[BaseException], Exception], retry_on: tuple = (OSError,),
          net: NetworkSettings | None = None, sleep: Callable[[float], None] = time.sleep) -> T:
    """`call()`, tried again after each wait of `delays` when it raises one of `retry_on`; after the last
    try, `give_up(err)` is raised from the last error."""
    waits = delays(net)
    for attempt in range(len(waits) + 1):
        try:
            return call()
        except retry_on as err:
            if attempt == len(waits):
                raise give_up(err) from err
            sleep(waits[attempt])
    raise AssertionError("unreachable")


def wait_for_port(host: str, port: int, what: str, net: NetworkSettings | None = None) -> None:
    """Return once a TCP connection to host:port opens; BadInputError naming `what` (the setting and
    its value) when none opens within the tries."""
    net = net or settings()

    def connect():
        with socket.create_connection((host, port), timeout=net.connect_timeout_s):
            pass

    tries = net.attempts
    retry(connect, lambda err: BadInputError(what, f"cannot reach {host}:{port} after {tries} tries "
                                                  f"({err.strerror or err}); is the Ray cluster up?"), net=net)
