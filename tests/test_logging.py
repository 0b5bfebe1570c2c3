"""The `medsynth` command's logging: -v gives debug messages, and no credential reaches any log at any
verbosity (botocore logs every signed S3 request, Authorization header included, at debug level)."""

import contextlib
import logging

from conftest import S3_ENV
from factory import storage
from factory.cli import main
from factory.logs import configure_logging
from factory.produce.writer import write_run
from shard_helpers import samples, spec

CREDENTIALS = (S3_ENV["AWS_ACCESS_KEY_ID"], S3_ENV["AWS_SECRET_ACCESS_KEY"])


@contextlib.contextmanager
def logging_of_a_fresh_process():
    """The root logger without handlers, as `medsynth` finds it (pytest's own set aside, so that the
    command's stderr handler is installed), and every logger's level as it was afterwards."""
    root = logging.getLogger()
    handlers, levels = root.handlers[:], {name: logger.level for name, logger in logging.Logger.manager.loggerDict.items()
                                          if isinstance(logger, logging.Logger)}
    root_level = root.level
    root.handlers.clear()
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(root_level)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def test_s3_calls_and_any_logger_log_no_credential_at_debug(s3_root, capsys):
    url = storage.join(s3_root, "object.bin")
    with logging_of_a_fresh_process():
        configure_logging(verbose=True)
        storage.atomic_put(url, b"payload")
        assert storage.read_bytes(url) == b"payload"
        logging.getLogger("factory.anything").debug("factory debug message")
        logging.getLogger("some.library").warning(
            "secret %s; headers {'Authorization': b'AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20260101/"
            "us-east-1/s3/aws4_request, Signature=0123abcd', 'X-Amz-Security-Token': b'FwoGZXIvYXdzE/abc=='}",
            S3_ENV["AWS_SECRET_ACCESS_KEY"])
    err = capsys.readouterr().err
    assert "DEBUG factory.anything: factory debug message" in err
    assert "WARNING some.library: secret [redacted]; headers {'Authorization': b'[redacted]', " \
           "'X-Amz-Security-Token': b'[redacted]'}" in err
    for secret in (*CREDENTIALS, "AKIAIOSFODNN7EXAMPLE", "0123abcd", "FwoGZXIvYXdzE"):
        assert secret not in err


def test_verbose_inspect_of_an_s3_run_logs_no_credential(s3_root, capsys):
    write_run(samples(), s3_root, spec(), progress=False)
    with logging_of_a_fresh_process():
        assert main(["-v", "inspect", s3_root]) == 0
        assert logging.getLogger("factory.produce").isEnabledFor(logging.DEBUG)
    captured = capsys.readouterr()
    assert "test-run" in captured.out
    assert "DEBUG botocore" not in captured.err and "DEBUG s3fs" not in captured.err  # request logs stay at INFO
    for secret in CREDENTIALS:
        assert secret not in captured.err
