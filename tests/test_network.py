"""Bounded waits (factory.network): the settings and their variables, the backoff, and an endpoint that
nothing listens on, for storage and for a Ray cluster address, answered in one line within seconds."""

import time

import pytest
from conftest import free_port

from factory import network, storage
from factory.cli import main
from factory.errors import BadInputError, StorageError
from factory.raytools import connect_ray

# Short waits for the tests: two tries, one connect second, a tenth of a second between tries.
QUICK = {"MEDSYNTH_NETWORK_ATTEMPTS": "2", "MEDSYNTH_CONNECT_TIMEOUT_S": "1", "MEDSYNTH_READ_TIMEOUT_S": "2",
         "MEDSYNTH_BACKOFF_S": "0.1"}


def test_settings_come_from_the_variables_and_bad_values_name_them():
    assert network.settings({}) == network.NetworkSettings()
    assert network.settings({"AWS_MAX_ATTEMPTS": "3"}).attempts == 3
    assert network.settings({"AWS_MAX_ATTEMPTS": "3", "MEDSYNTH_NETWORK_ATTEMPTS": "7"}).attempts == 7
    quick = network.settings(QUICK)
    assert (quick.attempts, quick.connect_timeout_s, quick.read_timeout_s, quick.backoff_s) == (2, 1.0, 2.0, 0.1)
    assert network.botocore_config(quick) == {"connect_timeout": 1.0, "read_timeout": 2.0,
                                              "retries": {"max_attempts": 2, "mode": "standard"}}
    for name, value in (("MEDSYNTH_NETWORK_ATTEMPTS", "0"), ("MEDSYNTH_CONNECT_TIMEOUT_S", "soon")):
        with pytest.raises(BadInputError, match=rf"^{name}: must be a positive"):
            network.settings({name: value})


def test_backoff_doubles_up_to_its_ceiling_and_gives_up_after_the_last_try():
    net = network.NetworkSettings(attempts=6, backoff_s=1, backoff_max_s=5)
    assert network.delays(net) == [1, 2, 4, 5, 5]
    slept, calls = [], []

    def failing():
        calls.append(1)
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(BadInputError, match="^x: gave up") as caught:
        network.retry(failing, lambda err: BadInputError("x", "gave up"), net=net, sleep=slept.append)
    assert len(calls) == 6 and slept == [1, 2, 4, 5, 5]
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
    answers = iter([OSError("once"), "ok"])

    def flaky():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert network.retry(flaky, lambda err: AssertionError(err), net=net, sleep=slept.append) == "ok"


def test_s3_calls_carry_the_settings(s3_root, monkeypatch):
    for name, value in QUICK.items():
        monkeypatch.setenv(name, value)
    fs, _ = storage.filesystem(s3_root)
    config = fs.client_kwargs.get("config") if hasattr(fs, "client_kwargs") else None
    assert fs.config_kwargs["connect_timeout"] == 1.0 and fs.config_kwargs["retries"]["max_attempts"] == 2
    assert fs.retries == 2 and config is None


@pytest.mark.parametrize("call", ["read_bytes", "exists", "list_names", "inspect"])
def test_an_unreachable_object_store_is_one_line_within_seconds(call, s3_root, monkeypatch, capsys):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    for name, value in QUICK.items():
        monkeypatch.setenv(name, value)
    url = storage.join(s3_root, "manifest.json")
    start = time.monotonic()
    if call == "inspect":
        assert main(["inspect", s3_root]) == 2
        line = capsys.readouterr().err.strip()
        assert "\n" not in line and "Traceback" not in line
        assert line.startswith(f"medsynth inspect: error: {url}: cannot reach the object store (Could not connect "
                               f'to the endpoint URL: "{endpoint}/'), line
    else:
        with pytest.raises(StorageError) as caught:
            getattr(storage, call)(url if call != "list_names" else s3_root)
        assert str(caught.value).startswith(f"{url if call != 'list_names' else s3_root}: cannot reach the object "
                                            f'store (Could not connect to the endpoint URL: "{endpoint}/')
    assert time.monotonic() - start < 30


def test_an_unreachable_ray_address_is_one_line_within_seconds(monkeypatch, capsys, tmp_path):
    import ray

    if ray.is_initialized():
        pytest.skip("this process holds a Ray instance already: connect_ray would not dial")
    address = f"127.0.0.1:{free_port()}"
    for name, value in QUICK.items():
        monkeypatch.setenv(name, value)
    for given in (address, f"ray://{address}"):
        monkeypatch.setenv("RAY_ADDRESS", given)
        start = time.monotonic()
        with pytest.raises(BadInputError) as caught:
            connect_ray()
        assert str(caught.value).startswith(f"RAY_ADDRESS={given}: cannot reach {address} after 2 tries")
        assert time.monotonic() - start < 30 and not ray.is_initialized()
    # The same through a command: one line, exit code 2.
    assert main(["produce", "--source", "phantom-cxr", "--count", "4", "--size", "32",
                 "--out", str(tmp_path / "run")]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"medsynth produce: error: RAY_ADDRESS=ray://{address}: cannot reach"), line
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_an_upload_to_an_endpoint_that_never_answers_times_out(s3_root, monkeypatch):
    """An endpoint that accepts connections and stays silent: a write gives up after the read timeout. With
    botocore's `Expect: 100-continue` aiohttp waited for the interim answer with no timeout at all, forever
    (factory.network.without_expect_continue)."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        for name, value in {**QUICK, "MEDSYNTH_NETWORK_ATTEMPTS": "1", "MEDSYNTH_READ_TIMEOUT_S": "1"}.items():
            monkeypatch.setenv(name, value)
        start = time.monotonic()
        with pytest.raises(Exception, match="Read timeout on endpoint URL"):
            storage.atomic_put(storage.join(s3_root, "object.bin"), b"x" * 1000)
        assert time.monotonic() - start < 15
