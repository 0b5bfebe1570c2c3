"""Logging for the command line and the Ray jobs: stderr, debug messages on request, and no credential
in any record at any verbosity."""

from __future__ import annotations

import logging
import os
import re

# Libraries that log every HTTP request with its headers at debug level; a signed S3 request's
# Authorization header holds the access key id. -v gives the factory's own debug messages, not these.
HTTP_LOGGERS = ("botocore", "boto3", "s3transfer", "aiobotocore", "s3fs", "fsspec", "urllib3", "aiohttp")
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
REDACTED = "[redacted]"
# The shapes credentials take in logged requests, also when they come from explicit storage options
# rather than the environment: header values, query parameters, SigV4 credential scopes, key ids.
CREDENTIAL_PATTERNS = (
    (re.compile(r"((?:Authorization|X-Amz-Security-Token)['\"]?\s*:\s*b?['\"]?)[^'\"\r\n]+", re.IGNORECASE),
     rf"\1{REDACTED}"),
    (re.compile(r"(X-Amz-(?:Security-Token|Signature)=)[^&\s'\"]+", re.IGNORECASE), rf"\1{REDACTED}"),
    (re.compile(r"(Credential=)[^/%&\s,'\"]+", re.IGNORECASE), rf"\1{REDACTED}"),
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), REDACTED),
)


def redact(text: str) -> str:
    """`text` without the AWS credentials of the environment or anything shaped like a credential."""
    for name in CREDENTIAL_VARIABLES:
        value = os.environ.get(name)
        if value:
            text = text.replace(value, REDACTED)
    for pattern, replacement in CREDENTIAL_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactCredentials(logging.Filter):
    """On a handler, redacts every record it emits, from whatever logger: the message with its
    arguments filled in, and the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_REDACT = RedactCredentials()  # one instance, so that configuring again adds no second filter


def configure_logging(verbose: bool = False) -> None:
    """Log to stderr (debug messages with `verbose`), with no credential in any record."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in HTTP_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_REDACT)
