"""cluster/: launcher YAMLs against the schema the installed Ray ships, the runtime_env, and the
local-cluster script's command lines (no cluster is started here)."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ray = pytest.importorskip("ray")

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
LAUNCHER_YAMLS = sorted(CLUSTER.glob("aws-*.yaml"))
RAY_SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def launcher_schema() -> dict:
    if not RAY_SCHEMA.exists():
        pytest.skip(f"ray {ray.__version__} ships no launcher schema at {RAY_SCHEMA}")
    return json.loads(RAY_SCHEMA.read_text())


def test_launcher_yamls_exist():
    assert {p.name for p in LAUNCHER_YAMLS} == {"aws-train.yaml", "aws-produce.yaml"}


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_yaml_matches_ray_schema(path, launcher_schema):
    jsonschema.validate(load(path), launcher_schema)


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_yaml_survives_ray_up_preparation(path, launcher_schema):
    """`ray up` merges the provider defaults, then validates the result; do the same, offline."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(load(path)))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    # Nodes run the project's image; nothing installs the package on them (Ray's own defaults, such as
    # boto3 for the head's AWS autoscaler, stay).
    assert load(path)["setup_commands"] == [] and "file_mounts" not in load(path)
    commands = [c for key in ("setup_commands", "head_setup_commands", "worker_setup_commands")
                for c in prepared.get(key, [])]
    assert not [c for c in commands if "medsynth" in c or "pip install ." in c], commands
    assert prepared["docker"]["image"] == k8s_image()


def k8s_image() -> str:
    """The image the Kubernetes manifests run (k8s/Dockerfile), as name:tag."""
    kustomization = load(CLUSTER.parent / "k8s" / "kustomization.yaml")
    (image,) = kustomization["images"]
    return f"{image['name']}:{image['newTag']}"


def test_gpu_training_config_fills_the_training_launchers_gpu_nodes():
    from factory.config import TrainConfig, load_config

    config = load_config(TrainConfig, CLUSTER.parent / "jobs" / "configs" / "train-gpu.yaml")
    assert config.use_gpu and config.precision == "bf16"
    gpu_types = [n for n in worker_types(CLUSTER / "aws-train.yaml").values() if n["resources"].get("GPU")]
    assert any(config.workers % n["resources"]["GPU"] == 0 and config.workers <= n["resources"]["GPU"] * n["max_workers"]
               and config.cpus_per_worker * n["resources"]["GPU"] <= n["resources"]["CPU"] for n in gpu_types)
    assert "jobs/configs/train-gpu.yaml" in (CLUSTER / "aws-train.yaml").read_text()


def test_schema_rejects_an_unknown_node_type_field(launcher_schema):
    config = load(CLUSTER / "aws-train.yaml")
    config["available_node_types"]["gpu-train"]["gpus_please"] = 4
    with pytest.raises(jsonschema.ValidationError, match="gpus_please"):
        jsonschema.validate(config, launcher_schema)


def worker_types(path: Path) -> dict[str, dict]:
    config = load(path)
    return {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_worker_types_have_autoscaling_bounds(path):
    config = load(path)
    types = worker_types(path)
    for name, node in types.items():
        assert 0 <= node["min_workers"] <= node["max_workers"], name
    assert sum(n["min_workers"] for n in types.values()) <= config["max_workers"]
    assert max(n["max_workers"] for n in types.values()) <= config["max_workers"]


def test_training_has_a_gpu_type_and_production_has_cpu_and_gpu_types():
    train = worker_types(CLUSTER / "aws-train.yaml")
    produce = worker_types(CLUSTER / "aws-produce.yaml")
    assert any(n["resources"].get("GPU", 0) > 0 for n in train.values())
    assert any(n["resources"].get("GPU", 0) > 0 for n in produce.values())
    assert any(n["resources"].get("GPU", 0) == 0 and n["resources"]["CPU"] > 0 for n in produce.values())


def test_runtime_env_is_valid_and_carries_no_credentials():
    from ray.runtime_env import RuntimeEnv

    raw = load(CLUSTER / "runtime_env.yaml")
    RuntimeEnv(**raw)
    assert raw["working_dir"] == "."
    assert not any(key.startswith("AWS_") for key in raw.get("env_vars", {}))
    assert ".venv/" in raw["excludes"]


@pytest.fixture(scope="module")
def local_cluster():
    spec = importlib.util.spec_from_file_location("local_cluster", CLUSTER / "local_cluster.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["local_cluster"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules["local_cluster"]


def test_local_cluster_parses_worker_specs(local_cluster):
    args = local_cluster.build_parser().parse_args(["up", "--worker", "1", "--worker", '2:{"produce": 1}'])
    assert [(w.num_cpus, w.resources) for w in args.worker] == [(1, {}), (2, {"produce": 1})]
    with pytest.raises(SystemExit):
        local_cluster.build_parser().parse_args(["up", "--worker", "two"])


def test_local_cluster_nodes_get_their_own_dirs_and_agent_ports(local_cluster, tmp_path):
    ports = {"gcs": 40001, "dashboard": 40002}
    head = local_cluster.NodeSpec("head", 1)
    worker = local_cluster.NodeSpec("worker-1", 2, {"produce": 1})
    head_cmd = local_cluster.node_command(head, tmp_path / "head", ports, "127.0.0.1:40001")
    worker_cmd = local_cluster.node_command(worker, tmp_path / "w1", None, "127.0.0.1:40001")

    def flag(cmd, name):
        return next(a.split("=", 1)[1] for a in cmd if a.startswith(f"--{name}="))

    assert "--head" in head_cmd and "--head" not in worker_cmd
    assert flag(worker_cmd, "address") == "127.0.0.1:40001"
    assert flag(worker_cmd, "num-cpus") == "2" and json.loads(flag(worker_cmd, "resources")) == {"produce": 1}
    assert flag(head_cmd, "temp-dir") != flag(worker_cmd, "temp-dir")
    assert flag(head_cmd, "dashboard-agent-listen-port") != flag(worker_cmd, "dashboard-agent-listen-port")


def test_local_cluster_refuses_a_state_dir_too_long_for_ray_sockets(local_cluster, tmp_path):
    long_dir = tmp_path / ("x" * 50)
    with pytest.raises(SystemExit, match="too long"):
        local_cluster.main(["up", "--state-dir", str(long_dir)])
