"""Object storage through fsspec: local paths, file://, memory:// and s3:// (AWS, MinIO, Ceph ...).

S3 settings come from the standard AWS environment variables (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL) or from an explicit
storage-options mapping, which wins key by key. Nothing here logs or returns credentials.

Writes are atomic: an object appears under its final name only once it is complete. Object stores
give that for free (an S3 upload, single or multipart, becomes visible when it completes), so on
error the upload is aborted instead of completed; filesystems with a cheap rename (local disk,
memory) are written under a temporary name and renamed into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import uuid
from typing import IO, Any, Iterator, Mapping

import fsspec
from fsspec.implementations.local import LocalFileSystem

from factory import network
from factory.errors import BadInputError, StorageError

StorageOptions = Mapping[str, Any] | None

_HASH_CHUNK = 4 << 20

_PROBE_NAME = ".medsynth-write-check"
# The write check asks briefly: an unreachable endpoint is reported within seconds, not after the
# retries (about 14 s) that a long run rightly makes.
_PROBE_CONFIG = {"connect_timeout": 3, "read_timeout": 5, "retries": {"max_attempts": 2, "mode": "standard"}}
_S3_PROBLEMS = {
    "NoSuchBucket": "the bucket does not exist",
    "AccessDenied": "access denied: the credentials may not write here",
    "403": "access denied: the credentials may not write here",
    "InvalidAccessKeyId": "the object store does not know this access key (AWS_ACCESS_KEY_ID)",
    "SignatureDoesNotMatch": "the secret key does not match the access key (AWS_SECRET_ACCESS_KEY)",
    "ExpiredToken": "the session token has expired (AWS_SESSION_TOKEN)",
    "RequestTimeTooSkewed": "this machine's clock is too far from the object store's",
}


def s3_options_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """s3fs options from the standard AWS variables; unset variables leave s3fs's own defaults."""
    env = os.environ if environ is None else environ
    options: dict[str, Any] = {}
    if env.get("AWS_ACCESS_KEY_ID"):
        options["key"] = env["AWS_ACCESS_KEY_ID"]
    if env.get("AWS_SECRET_ACCESS_KEY"):
        options["secret"] = env["AWS_SECRET_ACCESS_KEY"]
    if env.get("AWS_SESSION_TOKEN"):
        options["token"] = env["AWS_SESSION_TOKEN"]
    if env.get("AWS_ENDPOINT_URL"):
        options["endpoint_url"] = env["AWS_ENDPOINT_URL"]
    region = env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION")
    if region:
        options["client_kwargs"] = {"region_name": region}
    return options


def protocol_of(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else "file"


def filesystem(url: str, storage_options: StorageOptions = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem for `url` and the path inside it."""
    options = dict(storage_options or {})
    if protocol_of(url) == "s3":
        network.without_expect_continue()
        options = {**s3_options_from_env(), **options}
        # Every S3 call waits and retries as factory.network says; explicit config_kwargs win key by key.
        options["config_kwargs"] = {**network.botocore_config(), **options.get("config_kwargs", {})}
    fs, path = fsspec.core.url_to_fs(url, **options)
    if protocol_of(url) == "s3" and not options.get("skip_instance_cache"):
        fs.retries = network.settings().attempts  # s3fs's own tries of a body cut off mid-read
    return fs, path


def absolute(url: str) -> str:
    """Local paths made absolute, so that processes with another working directory (Ray workers)
    reach the same place; URLs with a scheme are returned as they are."""
    return url if "://" in url else os.path.abspath(url)


def join(url: str, *parts: str) -> str:
    """Join path parts onto a URL or local path with forward slashes."""
    if "://" in url:
        protocol, rest = url.split("://", 1)
        return f"{protocol}://{posixpath.join(rest, *parts)}"
    return os.path.join(url, *parts)


def is_object_store(fs: fsspec.AbstractFileSystem) -> bool:
    """Object stores publish an upload atomically on completion and have no cheap rename."""
    return not isinstance(fs, LocalFileSystem) and "memory" not in fs.protocol


def remote_problem(err: BaseException) -> str | None:
    """storage_problem for errors that come from the object store (botocore's, also when s3fs re-raises
    them as OSError); None for any other exception."""
    from botocore import exceptions as boto

    remote = (boto.BotoCoreError, boto.ClientError)
    if isinstance(err, remote) or isinstance(err.__cause__, remote):
        return storage_problem(err)
    return None


@contextlib.contextmanager
def reported(url: str) -> Iterator[None]:
    """An object store's failure (unreachable after the retries, refused keys ...) as StorageError: one
    line naming `url`."""
    try:
        yield
    except FileNotFoundError as err:
        raise BadInputError(url, "not found") from err
    except StorageError:
        raise
    except Exception as err:
        problem = remote_problem(err)
        if problem is None:
            raise
        raise StorageError(url, problem) from err


def open_file(url: str, mode: str = "rb", storage_options: StorageOptions = None, **kwargs) -> IO:
    fs, path = filesystem(url, storage_options)
    with reported(url):
        return fs.open(path, mode, **kwargs)


def exists(url: str, storage_options: StorageOptions = None) -> bool:
    fs, path = filesystem(url, storage_options)
    with reported(url):
        return fs.exists(path)


def size(url: str, storage_options: StorageOptions = None) -> int:
    fs, path = filesystem(url, storage_options)
    with reported(url):
        return int(fs.size(path))


def read_bytes(url: str, storage_options: StorageOptions = None) -> bytes:
    fs, path = filesystem(url, storage_options)
    with reported(url):
        return fs.cat_file(path)


def list_names(url: str, storage_options: StorageOptions = None) -> list[str]:
    """Names of the objects directly under `url` (sorted); empty when it does not exist."""
    fs, path = filesystem(url, storage_options)
    try:
        with reported(url):
            entries = fs.ls(path, detail=False, refresh=True) if is_object_store(fs) else fs.ls(path, detail=False)
    except BadInputError as err:
        if isinstance(err, StorageError):
            raise
        return []
    return sorted(posixpath.basename(entry.rstrip("/")) for entry in entries)


def sha256(url: str, storage_options: StorageOptions = None) -> str:
    """Hex sha256 of an object's bytes, streamed."""
    digest = hashlib.sha256()
    with open_file(url, "rb", storage_options) as f, reported(url):
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def remove(url: str, storage_options: StorageOptions = None) -> None:
    fs, path = filesystem(url, storage_options)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path)


def storage_problem(err: BaseException) -> str | None:
    """What a storage exception means, in one line of plain words that never hold a credential; None for
    exceptions that are not storage errors."""
    from botocore import exceptions as boto

    client = err if isinstance(err, boto.ClientError) else err.__cause__  # s3fs re-raises them as OSError
    if isinstance(client, boto.ClientError):
        error = client.response.get("Error", {})
        code = str(error.get("Code", ""))
        problem = _S3_PROBLEMS.get(code) or f"the object store refused the request: {code} {error.get('Message', '')}"
    elif isinstance(err, boto.NoCredentialsError):
        problem = "no S3 credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
    elif isinstance(err, (boto.ConnectionError, boto.HTTPClientError)):
        problem = f"cannot reach the object store ({err})"
    elif isinstance(err, boto.BotoCoreError):
        problem = str(err)
    elif isinstance(err, OSError):
        problem = err.strerror or str(err)
    else:
        return None
    return " ".join(problem.split())


def check_writable(url: str, storage_options: StorageOptions = None) -> None:
    """Raise StorageError (one line naming `url`) unless runs can write at `url`: the bucket exists, the
    credentials are accepted, the endpoint answers, the path is or can become a folder. Writes and removes
    one empty probe object (in local folders made for it and removed again). For drivers, before any worker
    starts."""
    options = dict(storage_options or {})
    object_store = protocol_of(url) == "s3"
    if object_store:
        if not url.split("://", 1)[1].split("/", 1)[0]:
            raise StorageError(url, "names no bucket (expected s3://BUCKET/PREFIX)")
        options["config_kwargs"] = {**options.get("config_kwargs", {}), **_PROBE_CONFIG}
        options["skip_instance_cache"] = True  # the probe's settings stay off the instance runs reuse
    created: list[str] = []
    try:
        fs, path = filesystem(url, options)
        if object_store:
            fs.retries = 1  # s3fs's own retries come on top of botocore's
        else:
            created = missing_folders(fs, path)
            fs.makedirs(path, exist_ok=True)
        probe = posixpath.join(path, _PROBE_NAME)
        fs.pipe_file(probe, b"")
        # Runs never delete objects on an object store, so keys without that right must still pass.
        with contextlib.suppress(FileNotFoundError, PermissionError):
            fs.rm(probe)
    except (ValueError, ImportError) as err:  # fsspec: an unknown protocol or a missing filesystem package
        raise StorageError(url, f"not a usable location ({err})") from err
    except Exception as err:
        problem = storage_problem(err)
        if problem is None:
            raise
        raise StorageError(url, f"cannot write here: {problem}") from err
    finally:
        # The run makes its folders as it writes: a run refused after this check leaves nothing behind.
        for folder in created:
            with contextlib.suppress(OSError):
                fs.rmdir(folder)


def missing_folders(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    """`path` and those of its parents that do not exist, deepest first."""
    missing = []
    while not fs.exists(path) and posixpath.dirname(path) != path:
        missing.append(path)
        path = posixpath.dirname(path)
    return missing


@contextlib.contextmanager
def atomic_writer(url: str, storage_options: StorageOptions = None) -> Iterator[IO[bytes]]:
    """A binary file that appears at `url` only if the block exits without an exception."""
    fs, path = filesystem(url, storage_options)
    parent = posixpath.dirname(path) if is_object_store(fs) else os.path.dirname(path)
    if not is_object_store(fs):
        fs.makedirs(parent, exist_ok=True)
        temporary = posixpath.join(parent, f".{posixpath.basename(path)}.{uuid.uuid4().hex}.partial")
        try:
            with fs.open(temporary, "wb") as f:
                yield f
            fs.mv(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                fs.rm(temporary)
            raise
        return
    f = fs.open(path, "wb")
    try:
        yield f
    except BaseException:
        # Closing would publish a partial object: abort the (multipart) upload instead.
        f.discard()
        f.closed = True
        raise
    f.close()
    fs.invalidate_cache(parent)


def create_exclusive(url: str, data: bytes, storage_options: StorageOptions = None) -> bool:
    """Write `data` at `url` only if nothing is there: True if this call created it, False if it existed.
    Exclusive on a local disk (O_EXCL) and on S3 (a conditional put, If-None-Match: *), so of two
    writers racing for one name exactly one wins."""
    fs, path = filesystem(url, storage_options)
    if not is_object_store(fs):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with reported(url):
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:  # on S3 a refused precondition (412), which reported() would call an error
            return False
    if is_object_store(fs):
        fs.invalidate_cache(posixpath.dirname(path))
    return True


def atomic_put(url: str, data: bytes, storage_options: StorageOptions = None) -> None:
    with atomic_writer(url, storage_options) as f:
        f.write(data)
