"""Fault matrix of production and training: `medsynth bench faults [--only NAME,...]`.

Each fault is injected into a real run: production from the phantom source (a few hundred samples,
shards of 20) into a local folder or moto's S3 server on loopback, or a tiny Ray Train run. Afterwards
the run is checked from storage alone: the manifest verifies (every shard's size, sha256, tar and
members, and its commit record equal to the manifest's), the commit records at the location are
exactly the shards the manifest lists, and every sample index 0..count-1 appears exactly once across
the shards' tars. Each row says what happened, samples lost and duplicated (both must be 0) and the
time from the fault to the finished run (a rerun included, where one was needed).

The bench starts one local Ray (2 CPUs) that the production drivers join as separate processes
(RAY_ADDRESS), so a driver can be killed without taking the cluster; the node fault brings up its own
local 2-node cluster (cluster/local_cluster.py). The network settings (factory.network) are made small
(MEDSYNTH_* variables, set before Ray starts so its workers get them), so that an endpoint that is
down is given up within seconds, as a bench can wait for. Writes docs/bench/faults.json (with the
machine's description and the load) and docs/bench/faults.md's table to stdout.
"""

from __future__ import annotations

import argparse
import errno
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from fsspec.implementations.local import LocalFileSystem

REPO = Path(__file__).resolve().parents[2]
COUNT, SHARD_SIZE, SIZE, SEED, ACTORS = 400, 20, 32, 7, 2
BUCKET = "faults"
# Small network settings: a closed endpoint is given up after about 2+0.5+2+1+2 s per call.
NETWORK_ENV = {"MEDSYNTH_CONNECT_TIMEOUT_S": "2", "MEDSYNTH_READ_TIMEOUT_S": "5", "MEDSYNTH_NETWORK_ATTEMPTS": "3",
               "MEDSYNTH_BACKOFF_S": "0.5", "MEDSYNTH_BACKOFF_MAX_S": "2"}
UNREACHABLE_BOUND_S = 30.0  # what "a clear error within a bounded time" is held to
FULL_DISK = "fullfile"


# --- a local disk that fills up -------------------------------------------------------------------

def _limit_of(path: str) -> tuple[Path, int] | None:
    """(folder, bytes) of the nearest folder above `path` that has a `{folder}.limit` file."""
    for folder in Path(path).parents:
        try:
            return folder, int(Path(f"{folder}.limit").read_text())
        except (OSError, ValueError):
            continue
    return None


class _FullDiskFile(io.RawIOBase):
    """A file of FullDiskFileSystem: each write checks its folder's usage against the limit first."""

    def __init__(self, path: str, mode: str):
        self.path, self.raw = path, open(path, mode)

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        limit = _limit_of(self.path)
        if limit is not None:
            used = sum(p.stat().st_size for p in limit[0].rglob("*") if p.is_file())
            if used + len(data) > limit[1]:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.path)
        written = self.raw.write(data)
        self.raw.flush()
        return written

    def close(self) -> None:
        self.raw.close()
        super().close()


class FullDiskFileSystem(LocalFileSystem):
    """`fullfile:///PATH`: the local disk, except that a write fails with ENOSPC, as on a full disk, once
    the bytes under a folder F above it would exceed the number in the file `F.limit`; without such a file it
    is the local disk. The limit lives in a file, so the driver and every actor see the same disk, and
    removing it frees the space. Production reaches it through fsspec's registry like any other store."""

    protocol = (FULL_DISK,)

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        if path.startswith(f"{FULL_DISK}://"):
            path = path[len(FULL_DISK) + 3:]
        return LocalFileSystem._strip_protocol(path)

    def _open(self, path, mode="rb", block_size=None, **kwargs):
        if "r" in mode:
            return super()._open(path, mode, block_size=block_size, **kwargs)
        path = self._strip_protocol(path)
        if self.auto_mkdir:
            self.makedirs(self._parent(path), exist_ok=True)
        return io.BufferedWriter(_FullDiskFile(path, mode.replace("b", "") + "b"))


def register_full_disk() -> None:
    """Make `fullfile://` known to fsspec in this process (the driver, and each Ray worker at its start)."""
    import fsspec

    fsspec.register_implementation(FULL_DISK, FullDiskFileSystem, clobber=True)


# --- checks ---------------------------------------------------------------------------------------

def check_run(out: str, count: int) -> dict[str, Any]:
    """The run at `out` from storage alone: manifest verified, commit records == manifest's shards, every
    index exactly once. Returns lost and duplicated sample counts and what failed, if anything."""
    from factory import storage
    from factory.errors import FactoryError
    from factory.produce.shards import sidecar_index
    from factory.produce.verify import verify_run
    from factory.run_manifest import read_manifest

    result: dict[str, Any] = {"problems": []}
    # This process listed the location while other processes wrote it: forget s3fs's cached listings.
    storage.filesystem(out)[0].invalidate_cache()
    try:
        manifest = read_manifest(out)
        verify_run(out, manifest)
    except FactoryError as err:
        return {"problems": [str(err)], "lost": None, "duplicated": None}
    names = storage.list_names(out)
    committed = sorted(i for i in map(sidecar_index, names) if i is not None)
    if committed != [r["index"] for r in manifest["shards"]]:
        result["problems"].append(f"commit records {committed} differ from the manifest's shards")
    leftovers = [n for n in names if n.endswith(".partial") or n == "driver.lock"]
    if leftovers:
        result["problems"].append(f"left behind: {leftovers}")
    seen: Counter[int] = Counter()
    for record in manifest["shards"]:
        data = storage.read_bytes(storage.join(out, record["name"]))
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            keys = {m.name.split(".", 1)[0] for m in tar.getmembers()}
        seen.update(int(key.rsplit("-", 1)[1]) for key in keys)
    dropped = sum(manifest["dropped"].values())
    result["lost"] = count - dropped - len(set(seen) & set(range(count)))
    result["duplicated"] = sum(n - 1 for n in seen.values()) + len(set(seen) - set(range(count)))
    result["shards"] = len(manifest["shards"])
    return result


def committed(out: str) -> int:
    from factory import storage
    from factory.errors import FactoryError
    from factory.produce.shards import sidecar_index

    try:
        return sum(sidecar_index(n) is not None for n in storage.list_names(out))
    except FactoryError:  # the store is down
        return -1


# --- the bench's environment ----------------------------------------------------------------------

class Bench:
    """Scratch folder, the S3 endpoint (moto, in this process, so it can be stopped and started again on its
    port with its objects kept) and the local Ray that drivers join."""

    def __init__(self):
        self.scratch = Path(tempfile.mkdtemp(prefix="mfaults", dir="/tmp"))
        self.port = _free_port()
        self.server = None
        self.start_s3()
        os.environ.update(NETWORK_ENV, AWS_ENDPOINT_URL=self.endpoint, AWS_ACCESS_KEY_ID="bench",
                          AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint).create_bucket(Bucket=BUCKET)
        import ray

        register_full_disk()
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
                 runtime_env={"worker_process_setup_hook": "factory.bench.faults.register_full_disk"},
                 _temp_dir=str(self.scratch / "ray"))
        self.ray = ray
        self.ray_address = ray._private.worker._global_node.address
        self.runs = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_s3(self) -> None:
        from moto.server import ThreadedMotoServer

        deadline = time.monotonic() + 30
        while True:
            try:
                self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
                self.server.start()
                return
            except OSError:  # the port is still held by the stopped server's socket
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop_s3(self) -> None:
        self.server.stop()

    def out(self, store: str) -> str:
        self.runs += 1
        if store == "s3":
            return f"s3://{BUCKET}/run-{self.runs}"
        return str(self.scratch / f"run-{self.runs}")

    def env(self, **changes: str) -> dict[str, str]:
        return {**os.environ, "RAY_ADDRESS": self.ray_address, **changes}

    def close(self) -> None:
        self.ray.shutdown()
        self.server.stop()
        shutil.rmtree(self.scratch, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def produce_command(out: str, count: int = COUNT, source: tuple[str, ...] = ()) -> list[str]:
    source = source or ("--source", "phantom-cxr", "--size", str(SIZE))
    return [sys.executable, "-m", "factory", "produce", *source, "--count", str(count), "--shard-size",
            str(SHARD_SIZE), "--out", out, "--seed", str(SEED), "--actors", str(ACTORS)]


def start(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, cwd=REPO)


def finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    output = process.communicate(timeout=timeout)[0]
    return process.returncode, output


def last_line(output: str) -> str:
    lines = [line for line in output.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def wait_for(condition: Callable[[], bool], process: subprocess.Popen | None = None, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the run ended before the fault: {process.communicate()[0][-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for the run to reach the fault")
        time.sleep(0.1)


def rerun(bench: Bench, command: list[str]) -> tuple[int, str]:
    return finish(start(command, bench.env()))


def row(name: str, store: str, happened: str, check: dict[str, Any], recover_s: float | None,
        expected: bool = True) -> dict[str, Any]:
    ok = expected and not check.get("problems") and check.get("lost") == 0 and check.get("duplicated") == 0
    return {"fault": name, "store": store, "happened": happened, "lost": check.get("lost"),
            "duplicated": check.get("duplicated"), "recover_s": None if recover_s is None else round(recover_s, 1),
            "problems": check.get("problems", []), "ok": bool(ok)}


# --- the faults -----------------------------------------------------------------------------------

def fault_driver_killed(bench: Bench) -> dict[str, Any]:
    """The driver SIGKILLed mid-run (its actors go with it), then the same command again."""
    out = bench.out("local")
    command = produce_command(out)
    driver = start(command, bench.env())
    wait_for(lambda: committed(out) >= 4, driver)
    os.killpg(driver.pid, signal.SIGKILL)
    killed_at, before = time.monotonic(), committed(out)
    driver.wait()
    code, output = rerun(bench, command)
    took = time.monotonic() - killed_at
    return row("driver-killed", "local", f"driver SIGKILLed with {before} of {COUNT // SHARD_SIZE} shards committed; "
               f"the rerun (exit {code}) took over its lock and wrote the rest", check_run(out, COUNT), took, code == 0)


def _actor_processes(bench: Bench, title: str) -> list:
    """This bench's Ray worker processes whose title holds `title` (never another Ray on the machine)."""
    import psutil

    raylet = next(p for p in psutil.Process().children(recursive=True) if "raylet" in p.name())
    found = []
    for process in raylet.children(recursive=True):
        try:
            if title in " ".join(process.cmdline()):
                found.append(process)
        except psutil.NoSuchProcess:
            continue
    return found


def fault_actor_killed(bench: Bench) -> dict[str, Any]:
    """One production actor SIGKILLed while it writes a shard; the pool replaces it."""
    out = bench.out("s3")
    driver = start(produce_command(out), bench.env())
    wait_for(lambda: committed(out) >= 3, driver)
    writing = [p for p in _actor_processes(bench, "ShardWorker.write")]
    if not writing:
        raise RuntimeError("no actor was writing a shard")
    writing[0].kill()
    killed_at = time.monotonic()
    code, output = finish(driver)
    took = time.monotonic() - killed_at
    replaced = "died; the shard goes back to the queue" in output or code == 0
    return row("actor-killed", "s3", f"actor pid {writing[0].pid} SIGKILLed mid-shard; the run (exit {code}) "
               "gave its shards to a replacement actor and finished", check_run(out, COUNT), took,
               code == 0 and replaced)


def fault_node_killed(bench: Bench) -> dict[str, Any]:
    """A worker node of a local 2-node Ray cluster killed (its whole process group) mid-run."""
    state_dir = Path(tempfile.mkdtemp(prefix="mfn", dir="/tmp"))
    script = [sys.executable, str(REPO / "cluster" / "local_cluster.py")]
    subprocess.run([*script, "up", "--state-dir", str(state_dir), "--head-cpus", "1", "--worker", "2",
                    "--timeout", "300"], check=True, cwd=REPO, stdout=subprocess.DEVNULL,
                   env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})  # its own cluster, not the bench's
    try:
        state = json.loads((state_dir / "cluster.json").read_text())
        worker = next(node for node in state["nodes"] if node["spec"]["name"].startswith("worker"))
        out = bench.out("local")
        command = produce_command(out)
        command[command.index("--actors") + 1] = "3"
        # local_cluster's nodes run without Ray's token auth, so must its drivers.
        driver = start(command, bench.env(RAY_ADDRESS=state["gcs_address"], RAY_AUTH_MODE="disabled"))
        wait_for(lambda: committed(out) >= 3, driver)
        os.killpg(worker["pid"], signal.SIGKILL)
        killed_at, before = time.monotonic(), committed(out)
        code, output = finish(driver)
        took = time.monotonic() - killed_at
    finally:
        subprocess.run([*script, "down", "--state-dir", str(state_dir)], check=False, cwd=REPO,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(state_dir, ignore_errors=True)
    return row("node-killed", "local", f"worker node (2 of 3 CPUs) SIGKILLed with {before} shards committed; "
               f"production went on on the head node (exit {code})", check_run(out, COUNT), took, code == 0) \
        | ({} if code == 0 else {"output": output[-3000:]})


def fault_s3_outage(bench: Bench, outage_s: float = 20.0) -> dict[str, Any]:
    """The S3 endpoint stopped mid-run for longer than a shard takes, then started again."""
    from factory import storage

    out = bench.out("s3")
    command = produce_command(out)
    driver = start(command, bench.env())
    wait_for(lambda: committed(out) >= 3, driver)
    shard_s = max(json.loads(storage.read_bytes(storage.join(out, "shard-000000.commit.json")))["seconds"], 0.1)
    bench.stop_s3()
    time.sleep(outage_s)
    bench.start_s3()
    restarted = time.monotonic()
    code, output = finish(driver)
    happened = f"endpoint down {outage_s:.0f} s (a shard takes {shard_s:.1f} s); "
    if code == 0:
        happened += "the run waited and finished"
    else:
        line = last_line(output)
        happened += f"the run stopped (exit {code}): \"{line}\"; "
        code, output = rerun(bench, command)
        happened += f"the rerun finished (exit {code})"
        if bench.endpoint not in line and "shard-" not in line:
            code = -1  # not one line naming the endpoint or the shard
    took = time.monotonic() - restarted
    return row("s3-outage", "s3", happened, check_run(out, COUNT), took, code == 0)


def _unreachable(endpoint: str, what: str) -> dict[str, Any]:
    """`medsynth produce` into S3 at `endpoint` that never answers: the CLI's exit code, its one line and
    how long it took, in this process (the refusal comes before Ray starts)."""
    import contextlib

    import s3fs

    from factory.cli import main

    saved = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    s3fs.S3FileSystem.clear_instance_cache()
    err = io.StringIO()
    began = time.monotonic()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(produce_command(f"s3://{BUCKET}/unreachable")[3:])
    finally:
        if saved is None:
            os.environ.pop("AWS_ENDPOINT_URL")
        else:
            os.environ["AWS_ENDPOINT_URL"] = saved
        s3fs.S3FileSystem.clear_instance_cache()
    took = time.monotonic() - began
    line = last_line(err.getvalue())
    expected = code == 2 and endpoint in line and took < UNREACHABLE_BOUND_S and len(err.getvalue().splitlines()) == 1
    check = {"problems": [] if expected else [f"exit {code} after {took:.1f} s: {err.getvalue()[-500:]}"],
             "lost": 0, "duplicated": 0}
    return row(f"s3-{what}", "s3", f"refused before Ray started, exit {code} after {took:.1f} s: \"{line}\"",
               check, None, expected) | {"seconds": round(took, 1)}


def fault_s3_unreachable(bench: Bench) -> dict[str, Any]:
    """Nothing listens at the endpoint from the start."""
    return _unreachable(f"http://127.0.0.1:{_free_port()}", "unreachable")


def fault_s3_silent(bench: Bench) -> dict[str, Any]:
    """The endpoint accepts connections and never answers (a hung server)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        return _unreachable(f"http://127.0.0.1:{silent.getsockname()[1]}", "silent")


def fault_two_drivers(bench: Bench) -> dict[str, Any]:
    """Two drivers started on the same output at once."""
    out = bench.out("s3")
    command = produce_command(out)
    began = time.monotonic()
    first, second = start(command, bench.env()), start(command, bench.env())
    (code_a, out_a), (code_b, out_b) = finish(first), finish(second)
    took = time.monotonic() - began
    codes = sorted([code_a, code_b])
    loser = out_b if code_b else out_a
    line = last_line(loser)
    refused = codes == [0, 2] and "driver.lock: another driver is writing run" in line
    return row("two-drivers", "s3", f"exits {code_a} and {code_b}; the refused one, before starting Ray: \"{line}\"",
               check_run(out, COUNT), took, refused)


def fault_disk_full(bench: Bench) -> dict[str, Any]:
    """The local disk fills up mid-run (fullfile://, ENOSPC past a limit), then space is freed and the
    command runs again."""
    from factory.config import ProduceConfig
    from factory.errors import FactoryError
    from factory.produce.runs import run_production

    folder = bench.scratch / f"disk-{bench.runs}"
    folder.mkdir()
    out = f"{FULL_DISK}://{folder}/run"
    limit = folder.with_name(folder.name + ".limit")
    limit.write_text(str(700_000))  # room for about half of the run's shards (some 70 KB each)
    config = ProduceConfig(source="phantom-cxr", size=SIZE, count=COUNT, shard_size=SHARD_SIZE, out=out, seed=SEED,
                           actors=ACTORS)
    try:
        run_production(config, progress=False)
    except FactoryError as err:
        full_at, kept = time.monotonic(), committed(out)
        partials = [p.name for p in (folder / "run").iterdir() if p.name.endswith(".partial")]
        limit.unlink()  # space freed
        run_production(config, progress=False)
        took = time.monotonic() - full_at
        stopped = "No space left on device" in str(err) and "\n" not in str(err)
        return row("disk-full", "local (fullfile://)", f"disk full with {kept} shards committed; the run stopped: "
                   f"\"{err}\" ({len(partials)} partial files of actors stopped mid-shard, swept by the rerun); space "
                   "freed, the rerun finished", check_run(out, COUNT), took, stopped)
    return row("disk-full", "local (fullfile://)", "the run finished: the disk never filled", check_run(out, COUNT),
               None, False)


def replaceable_bundles(bench: Bench) -> Path:
    """A folder with `used` (the bundle a run names), `saved` (a copy of it) and `other` (another bundle
    of the same shape)."""
    from factory.models.cli import init_bundle

    bundles = bench.scratch / f"bundles-{bench.runs}"
    init_bundle(str(bundles / "used"), "emixer", size=32, width=4, seed=1)
    init_bundle(str(bundles / "other"), "emixer", size=32, width=4, seed=2)
    shutil.copytree(bundles / "used", bundles / "saved")
    return bundles


def swap_bundle(bundles: Path, source: str) -> None:
    """Put `source`'s files in place of the used bundle's (in place, as a copy over it would)."""
    for name in ("weights.safetensors", "bundle.json"):
        shutil.copy(bundles / source / name, bundles / "used" / name)


def fault_bundle_replaced(bench: Bench) -> dict[str, Any]:
    """A bundle run's driver killed, its bundle replaced in place, the same command again; then the bundle
    put back and the command once more."""
    bundles = replaceable_bundles(bench)
    out = bench.out("local")
    command = produce_command(out, count=200, source=("--bundle", str(bundles / "used")))
    driver = start(command, bench.env())
    wait_for(lambda: committed(out) >= 2, driver)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    swap_bundle(bundles, "other")
    replaced_at = time.monotonic()
    code, output = rerun(bench, command)
    line = last_line(output)
    refused = code == 2 and "used/bundle.json: is not the bundle run" in line
    swap_bundle(bundles, "saved")
    again, _ = rerun(bench, command)
    took = time.monotonic() - replaced_at
    return row("bundle-replaced", "local", f"resume with the replaced bundle refused (exit {code}): \"{line}\"; "
               f"with the bundle put back the rerun finished (exit {again})", check_run(out, 200), took,
               refused and again == 0)


def fault_bundle_replaced_mid_run(bench: Bench) -> dict[str, Any]:
    """A bundle replaced while its run goes on, then an actor killed, so that its replacement loads the
    bundle again."""
    bundles = replaceable_bundles(bench)
    out = bench.out("local")
    command = produce_command(out, count=400, source=("--bundle", str(bundles / "used")))
    driver = start(command, bench.env())
    wait_for(lambda: committed(out) >= 2, driver)
    swap_bundle(bundles, "other")
    writing = _actor_processes(bench, "ShardWorker")
    writing[0].kill()
    replaced_at = time.monotonic()
    code, output = finish(driver)
    line = last_line(output)
    refused = code == 2 and line.startswith("medsynth produce: error: ") and \
        "bundle.json: changed since this run was planned" in line
    swap_bundle(bundles, "saved")
    again, _ = rerun(bench, command)
    took = time.monotonic() - replaced_at
    return row("bundle-replaced-mid-run", "local", f"the replacement actor refused the changed bundle, the run "
               f"stopped (exit {code}): \"{line}\"; with the bundle put back the rerun finished (exit {again})",
               check_run(out, 400), took, refused and again == 0) | ({} if refused else {"output": output[-3000:]})


TRAIN_MODEL = {"g_width": 8, "d_width": 8, "f_width": 8, "hidden": 32, "word_embedding": 32, "image_feature": 32,
               "d_text_hidden": 32}


def fault_training_worker_killed(bench: Bench, steps: int = 30) -> dict[str, Any]:
    """A Ray Train worker SIGKILLed mid-step: the worker group restarts from the newest checkpoint (the
    run's max_failures) and the step count goes on from there."""
    import yaml

    from factory.models.bundle import load_bundle

    folder = bench.scratch / f"train-{bench.runs}"
    folder.mkdir()
    config = {"name": "faults", "storage_path": str(folder / "runs"), "steps": steps, "checkpoint_every": 4,
              "batch_size": 8, "workers": 2, "zero_stage": 2, "model": TRAIN_MODEL,
              "data": {"count": 48, "size": 32, "min_word_count": 2}, "bundle_out": str(folder / "bundle")}
    (folder / "train.yaml").write_text(yaml.safe_dump(config))
    driver = start([sys.executable, "-m", "factory", "train", str(folder / "train.yaml")],
                   bench.env(RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.25"))
    run_dir = folder / "runs" / "faults"

    def checkpointed() -> int:
        return max((json.loads(p.read_text())["step"] for p in run_dir.glob("checkpoint_*/runner_state.json")),
                   default=0)

    def registered() -> bool:  # Ray Train has taken a checkpoint once every worker reported it
        try:
            return bool(json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text()))
        except (OSError, ValueError):
            return False

    wait_for(registered, driver, timeout=600)
    workers = _actor_processes(bench, "RayTrainWorker")
    if not workers:
        raise RuntimeError("no Ray Train worker found")
    newest = checkpointed()
    workers[-1].kill()
    killed_at = time.monotonic()
    code, output = finish(driver)
    took = time.monotonic() - killed_at
    resumed = output.split("resumed from step ")[1].split(")")[0] if "resumed from step " in output else "?"
    steps_done = int(load_bundle(str(folder / "bundle")).metadata["metrics"]["steps"]) if code == 0 else None
    ok = code == 0 and steps_done == steps and resumed.isdigit() and 4 <= int(resumed) <= steps
    check = {"problems": [] if ok else [f"exit {code}: {output[-1500:]}"], "lost": 0, "duplicated": 0}
    return row("training-worker-killed", "local", f"worker pid {workers[-1].pid} SIGKILLed after the checkpoint of "
               f"step {newest} was taken; the worker group restarted, resumed from step {resumed} and ran to step "
               f"{steps_done} of {steps}, bundle exported (exit {code})", check, took, ok)


FAULTS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "driver-killed": fault_driver_killed,
    "actor-killed": fault_actor_killed,
    "node-killed": fault_node_killed,
    "s3-outage": fault_s3_outage,
    "s3-unreachable": fault_s3_unreachable,
    "s3-silent": fault_s3_silent,
    "two-drivers": fault_two_drivers,
    "disk-full": fault_disk_full,
    "training-worker-killed": fault_training_worker_killed,
    "bundle-replaced": fault_bundle_replaced,
    "bundle-replaced-mid-run": fault_bundle_replaced_mid_run,
}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| fault | store | what happened | lost | duplicated | time to recover | ok |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        recover = "—" if r["recover_s"] is None else f"{r['recover_s']:.1f} s"
        happened = r["happened"].replace("|", "\\|")
        lines.append(f"| {r['fault']} | {r['store']} | {happened} | {r['lost']} | {r['duplicated']} | {recover} | "
                     f"{'yes' if r['ok'] else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from factory.bench.produce import _write, machine

    parser = argparse.ArgumentParser(prog="medsynth bench faults", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(FAULTS), help=f"comma-separated faults: {', '.join(FAULTS)}")
    parser.add_argument("--out", default="docs/bench/faults.json", help="JSON results")
    parser.add_argument("--update", action="store_true",
                        help="keep the rows of --out of faults not run now (each row records when it was measured)")
    args = parser.parse_args(argv)
    names = args.only.split(",")
    unknown = sorted(set(names) - set(FAULTS))
    if unknown:
        parser.error(f"unknown faults {unknown}; known: {', '.join(FAULTS)}")
    kept: list[dict[str, Any]] = []
    if args.update and os.path.exists(args.out):
        with open(args.out) as f:
            kept = [r for r in json.load(f)["results"] if r["fault"] not in names]
    bench = Bench()
    rows: list[dict[str, Any]] = []
    try:
        for number, name in enumerate(names, 1):
            print(f"[{number}/{len(names)}] {name} ...", file=sys.stderr, flush=True)
            load, began = os.getloadavg(), time.monotonic()
            try:
                result = FAULTS[name](bench)
            except Exception as err:  # a fault the bench could not stage is a row too
                result = {"fault": name, "store": "", "happened": f"bench error: {type(err).__name__}: {err}",
                          "lost": None, "duplicated": None, "recover_s": None, "problems": [str(err)], "ok": False}
            result |= {"wall_s": round(time.monotonic() - began, 1), "load_before": load,
                       "load_after": os.getloadavg(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            rows.append(result)
            print(f"[{number}/{len(names)}] {name}: {'ok' if result['ok'] else 'FAILED'} "
                  f"({result['wall_s']:.0f} s) {result['happened']}", file=sys.stderr, flush=True)
            _write(args.out, {"benchmark": "faults", "machine": machine(), "settings": vars(args)
                              | {"count": COUNT, "shard_size": SHARD_SIZE, "size": SIZE, "actors": ACTORS,
                                 "network": NETWORK_ENV},
                              "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "results": sorted(kept + rows, key=lambda r: list(FAULTS).index(r["fault"]))})
    finally:
        bench.close()
    print(table(sorted(kept + rows, key=lambda r: list(FAULTS).index(r["fault"]))))
    print(f"\nwritten to {args.out}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
