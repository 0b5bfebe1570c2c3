"""Bring up (and tear down) a multi-node Ray cluster on one machine, for development.

Each node is its own `ray start --block` process, started in a new session so that its whole
process group (raylet, GCS, workers, agents) can be stopped without touching any other Ray on the
machine; `ray stop` is never used because it kills every Ray process of the user.

    python cluster/local_cluster.py up --head-cpus 1 --worker 1 --worker '2:{"produce": 1}'
    python cluster/local_cluster.py status
    python cluster/local_cluster.py down

`up` prints the GCS address (for `ray status --address`) and the dashboard URL (for
`ray job submit --address` / RAY_ADDRESS). Nodes inherit this process's environment, so export
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION and AWS_ENDPOINT_URL before `up` and
every Ray worker reaches the same object store without putting keys into a runtime_env.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ray._private.utils import get_ray_client_dependency_error

# Ray puts unix sockets under <temp-dir>/session_<timestamp>_<pid>/sockets/; a socket path must stay
# under 108 bytes, which leaves about 40 characters for the temp dir itself.
MAX_TEMP_DIR_CHARS = 40
DEFAULT_STATE_DIR = Path(tempfile.gettempdir()) / f"msray-{os.getuid()}"
STATE_FILE = "cluster.json"
# The CLI of the Ray installed beside this interpreter, whatever bin/ holds.
RAY = [sys.executable, "-m", "ray.scripts.scripts"]


@dataclass
class NodeSpec:
    name: str
    num_cpus: int
    resources: dict[str, float] = field(default_factory=dict)


@dataclass
class NodeProcess:
    spec: NodeSpec
    pid: int
    temp_dir: str


@dataclass
class ClusterState:
    gcs_address: str
    dashboard_url: str
    nodes: list[NodeProcess]

    def save(self, state_dir: Path) -> None:
        (state_dir / STATE_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, state_dir: Path) -> ClusterState:
        path = state_dir / STATE_FILE
        if not path.exists():
            raise SystemExit(f"{path}: no local cluster recorded here (run `up` first)")
        raw = json.loads(path.read_text())
        nodes = [NodeProcess(NodeSpec(**n["spec"]), n["pid"], n["temp_dir"]) for n in raw["nodes"]]
        return cls(raw["gcs_address"], raw["dashboard_url"], nodes)


def parse_worker(text: str) -> NodeSpec:
    """`CPUS` or `CPUS:{"resource": amount, ...}` (a JSON object, as `ray start --resources`)."""
    cpus, _, resources = text.partition(":")
    try:
        spec = NodeSpec("worker", int(cpus), json.loads(resources) if resources else {})
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--worker {text!r}: expected CPUS[:JSON]: {err}") from err
    if not isinstance(spec.resources, dict):
        raise argparse.ArgumentTypeError(f"--worker {text!r}: resources must be a JSON object")
    return spec


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_command(spec: NodeSpec, temp_dir: Path, head_ports: dict[str, int] | None, gcs: str) -> list[str]:
    cmd = [
        *RAY, "start", "--block", "--disable-usage-stats",
        "--node-ip-address", "127.0.0.1",
        f"--temp-dir={temp_dir}",
        f"--num-cpus={spec.num_cpus}",
        # All nodes share this host's devices; letting each detect them would count every GPU N times.
        "--num-gpus=0",
        f"--resources={json.dumps(spec.resources)}",
        # Every node on a host would otherwise claim the same default agent port (52365).
        f"--dashboard-agent-listen-port={free_port()}",
    ]  # fmt: skip
    if head_ports is None:
        return [*cmd, f"--address={gcs}"]
    cmd += [
        "--head",
        f"--port={head_ports['gcs']}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={head_ports['dashboard']}",
    ]  # fmt: skip
    # Ray Client (the ray[client] extra) would bind 10001 by default, clashing with any other head here.
    if get_ray_client_dependency_error() is None:
        cmd.append(f"--ray-client-server-port={free_port()}")
    return cmd


def launch(spec: NodeSpec, state_dir: Path, head_ports: dict[str, int] | None, gcs: str) -> NodeProcess:
    temp_dir = state_dir / spec.name
    temp_dir.mkdir(parents=True, exist_ok=True)
    log = open(state_dir / f"{spec.name}.log", "w")  # noqa: SIM115 - the child keeps the descriptor
    # A job's entrypoint (`python jobs/x.py`) resolves `python` on the node's PATH: make that the
    # interpreter running this script, which has Ray and the package, even when no venv is activated.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    # Ray 2.60 turns token auth on for a head (only) when an earlier ray.init() left ~/.ray/auth_token,
    # and worker nodes then cannot join; this dev cluster chooses explicitly, for every node alike.
    env["RAY_AUTH_MODE"] = "disabled"
    proc = subprocess.Popen(
        node_command(spec, temp_dir, head_ports, gcs),
        env=env,
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    log.close()
    return NodeProcess(spec, proc.pid, str(temp_dir))


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def fail_if_dead(node: NodeProcess, state_dir: Path) -> None:
    if _exited(node.pid):
        log = (state_dir / f"{node.spec.name}.log").read_text()[-3000:]
        raise SystemExit(f"{node.spec.name} exited during start-up; log tail:\n{log}")


def _exited(pid: int) -> bool:
    # Within `up` the launcher is our child: reaping it tells a crash apart from a zombie.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == pid


def wait_for_port(port: int, node: NodeProcess, state_dir: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fail_if_dead(node, state_dir)
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise SystemExit(f"{node.spec.name}: port {port} not open after {timeout:.0f}s (see {state_dir})")


def alive_nodes(dashboard_url: str) -> list[dict]:
    from ray.util.state import list_nodes

    return [n.__dict__ for n in list_nodes(address=dashboard_url, filters=[("state", "=", "ALIVE")])]


def wait_for_nodes(state: ClusterState, state_dir: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in state.nodes:
            fail_if_dead(node, state_dir)
        try:
            if len(alive_nodes(state.dashboard_url)) == len(state.nodes):
                return
        except Exception:  # noqa: BLE001 - the dashboard answers errors while it starts
            pass
        time.sleep(1)
    raise SystemExit(f"not all {len(state.nodes)} nodes joined within {timeout:.0f}s (see {state_dir})")


def up(args: argparse.Namespace) -> None:
    state_dir: Path = args.state_dir
    if (state_dir / STATE_FILE).exists():
        raise SystemExit(f"{state_dir / STATE_FILE}: a local cluster is already recorded; run `down` first")
    if len(str(state_dir)) + len("/worker-NN") > MAX_TEMP_DIR_CHARS:
        raise SystemExit(f"--state-dir {state_dir}: too long for Ray's socket paths; use a shorter one")
    state_dir.mkdir(parents=True, exist_ok=True)
    ports = {"gcs": free_port(), "dashboard": free_port()}
    gcs = f"127.0.0.1:{ports['gcs']}"
    head = launch(NodeSpec("head", args.head_cpus, args.head_resources), state_dir, ports, gcs)
    state = ClusterState(gcs, f"http://127.0.0.1:{ports['dashboard']}", [head])
    # Recorded at once, so that `down` finds every node even if this process is killed midway.
    state.save(state_dir)
    try:
        wait_for_port(ports["gcs"], head, state_dir, args.timeout)
        for index, spec in enumerate(args.worker or [], start=1):
            spec.name = f"worker-{index}"
            state.nodes.append(launch(spec, state_dir, None, gcs))
            state.save(state_dir)
        wait_for_port(ports["dashboard"], head, state_dir, args.timeout)
        wait_for_nodes(state, state_dir, args.timeout)
    except BaseException:
        stop_all(state, args.grace, state_dir)
        raise
    print(f"GCS address:   {state.gcs_address}")
    print(f"dashboard:     {state.dashboard_url}")
    print(f"submit with:   ray job submit --address {state.dashboard_url} --working-dir . -- python jobs/...")
    print(f"tear down:     python {sys.argv[0]} down --state-dir {state_dir}")


def status(args: argparse.Namespace) -> None:
    state = ClusterState.load(args.state_dir)
    for node in state.nodes:
        running = "running" if group_alive(node.pid) else "gone"
        print(f"{node.spec.name:10s} pid {node.pid:<8d} {running:8s} cpus={node.spec.num_cpus} {node.spec.resources}")
    subprocess.run([*RAY, "status", "--address", state.gcs_address], check=False)


def down(args: argparse.Namespace) -> None:
    stop_all(ClusterState.load(args.state_dir), args.grace, args.state_dir)


def stop_all(state: ClusterState, grace: float, state_dir: Path) -> None:
    # Workers first, so that they do not log the head's disappearance as a failure.
    for node in reversed(state.nodes):
        stop_group(node.pid, grace)
        print(f"stopped {node.spec.name} (process group {node.pid})")
    (state_dir / STATE_FILE).unlink()


def stop_group(pgid: int, grace: float) -> None:
    # The group may end between any two of these calls: that is the goal, not an error (a
    # ProcessLookupError here used to end `down` before it reached the head, which then ran on).
    try:
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not group_alive(pgid):
                return
            time.sleep(0.2)
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, helptext in [
        (up.__name__, up, "start a head node and N worker nodes"),
        (status.__name__, status, "show the recorded nodes and `ray status`"),
        (down.__name__, down, "stop every recorded node"),
    ]:
        cmd = sub.add_parser(name, help=helptext)
        cmd.set_defaults(func=func)
        cmd.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                         help=f"where node temp dirs, logs and {STATE_FILE} live (default {DEFAULT_STATE_DIR})")  # fmt: skip
        cmd.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each start-up step")
        # A head's GCS takes about 30 s to leave after SIGTERM; `ray stop` itself force-kills after 16 s.
        cmd.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    start = sub.choices["up"]
    start.add_argument("--head-cpus", type=int, default=1, help="--num-cpus of the head node")
    start.add_argument("--head-resources", type=json.loads, default={}, help="JSON resources of the head")
    start.add_argument("--worker", action="append", type=parse_worker,
                       help='a worker node: CPUS or CPUS:{"name": amount}; repeat for more nodes')  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
