"""Installs by role (pyproject.toml): every package the code imports is declared, the base install
streams and inspects a run without any extra's packages, and requirements.lock pins every declared
requirement within its range. The fresh-venv install from the registry is slow (marked)."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from factory.produce.writer import write_run
from shard_helpers import LABELS, samples, spec

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
NAME = canonicalize_name(PROJECT["name"])
CONSUMER = Path(__file__).with_name("base_consumer.py")


def requirements(group: str | None) -> list[Requirement]:
    """The base requirements (group None) or an extra's, with the package's own extras expanded."""
    raw = PROJECT["dependencies"] if group is None else PROJECT["optional-dependencies"][group]
    found = []
    for requirement in map(Requirement, raw):
        if canonicalize_name(requirement.name) == NAME:
            for extra in sorted(requirement.extras):
                found += requirements(extra)
        else:
            found.append(requirement)
    return found


def names(group: str | None) -> set[str]:
    return {canonicalize_name(r.name) for r in requirements(group)}


@functools.cache
def module_distributions() -> dict[str, set[str]]:
    """Top-level module -> the installed distributions that provide it (one scan of site-packages)."""
    return {module: {canonicalize_name(d) for d in dists}
            for module, dists in importlib.metadata.packages_distributions().items()}


def distributions_of(module: str) -> set[str]:
    return module_distributions().get(module, set())


def third_party_imports(folder: Path) -> dict[str, set[str]]:
    """Top-level third-party module -> the files that import it (at the top or inside a function)."""
    found: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top != "factory":
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def test_every_imported_package_is_declared():
    declared = names(None) | {n for extra in PROJECT["optional-dependencies"] for n in names(extra)}
    undeclared = {}
    for folder in ("factory", "jobs", "cluster"):
        for module, files in third_party_imports(REPO / folder).items():
            dists = distributions_of(module)
            if not dists or not dists & declared:
                undeclared[module] = sorted(files)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_extras_bring_no_package_twice_at_different_pins():
    pins: dict[str, set[str]] = {}
    for extra in PROJECT["optional-dependencies"]:
        for requirement in requirements(extra):
            pins.setdefault(canonicalize_name(requirement.name), set()).add(str(requirement.specifier))
    assert {name: specs for name, specs in pins.items() if len(specs) > 1} == {}


def lock() -> dict[str, str]:
    pinned = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not NAME==VERSION"
            pinned[canonicalize_name(name)] = version.strip()
    return pinned


def test_lock_pins_every_declared_requirement_within_its_range():
    pinned = lock()
    assert NAME not in pinned, "the lock must not pin the package itself"
    for group in [None, *PROJECT["optional-dependencies"]]:
        for requirement in requirements(group):
            name = canonicalize_name(requirement.name)
            assert name in pinned, f"[{group or 'base'}] {requirement} is not in requirements.lock"
            assert requirement.specifier.contains(pinned[name], prereleases=True), (
                f"[{group or 'base'}] {requirement}: requirements.lock pins {pinned[name]}")


def test_makefile_installs_through_the_lock():
    makefile = (REPO / "Makefile").read_text()
    assert "LOCK := requirements.lock" in makefile
    assert "pip install --progress-bar off -c $(LOCK) -e '.[test]'" in makefile


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("base") / "run")
    write_run(samples(count=9), url, spec(count=9, shard_size=4, run_id="base-run"), progress=False)
    return url


def extras_only_modules() -> set[str]:
    """Top-level modules of every package an extra declares that the base does not."""
    extra_names = {n for extra in PROJECT["optional-dependencies"] for n in names(extra)} - names(None)
    return {module for module, dists in module_distributions().items() if dists & extra_names}


def consume(python: str, run: str, *extra_args: str, env: dict | None = None) -> dict:
    out = subprocess.run([python, str(CONSUMER), run, "--labels", ",".join(LABELS),
                          "--train-config", str(REPO / "jobs" / "configs" / "train.yaml"), *extra_args],
                         capture_output=True, text=True, timeout=300, env=env, cwd=run)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_consumed(seen: dict) -> None:
    assert seen["count"] == 9 and seen["keys"] == [f"base-run-{i:010d}" for i in range(9)]
    assert seen["image_types"] == ["ndarray"] and seen["image_dtype"] == "float32"
    assert seen["batch_shape"] == [4, 1, 16, 12]
    assert seen["mixed"] > 0
    assert "torch is not installed" in seen["default_refusal"] and "arrays='numpy'" in seen["default_refusal"]
    assert seen["inspect_rc"] == 0
    assert seen["train"] == [2, "medsynth train: error: torch is not installed; this command needs "
                                "pip install 'medsynth-factory[train]'"]
    assert seen["heavy_loaded"] == []


def test_base_modules_stream_and_inspect_with_every_extra_blocked(tiny_run):
    """The cheap stand-in for a base install: this venv, with every extra's packages made unimportable."""
    blocked = extras_only_modules()
    assert {"torch", "ray", "deepspeed", "zarr"} <= blocked
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    seen = consume(sys.executable, tiny_run, "--block", ",".join(sorted(blocked)), env=env)
    check_consumed(seen)
    expected = sum(float(s.images["png"].astype("float64").sum() / 255) for s in samples(count=9))
    assert seen["image_sum"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
def test_base_install_in_a_fresh_venv_streams_and_inspects_a_run(tmp_path, tiny_run):
    """pip install of the package without extras, from the configured registry, into a new venv (about
    2 to 3 minutes here, most of it downloads); then the same consumer, and the `medsynth` entry point."""
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", ".venv")
    for part in ("factory", "schemas"):
        shutil.copytree(REPO / part, source / part, symlinks=True, ignore=ignore)
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / part, source / part)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    started = time.perf_counter()
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "--progress-bar", "off", str(source)],
                             capture_output=True, text=True, timeout=900)
    print(f"base install: {time.perf_counter() - started:.0f} s")
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    listed = subprocess.run([str(venv / "bin" / "pip"), "list", "--format", "json"], capture_output=True,
                            text=True, check=True).stdout
    installed = {canonicalize_name(p["name"]) for p in json.loads(listed)}
    assert not installed & {"torch", "ray", "deepspeed", "torchvision", "zarr", "pyarrow"}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    check_consumed(consume(str(venv / "bin" / "python"), tiny_run, env=env))
    out = subprocess.run([str(venv / "bin" / "medsynth"), "inspect", tiny_run], capture_output=True, text=True,
                         timeout=120, env=env, cwd=tmp_path)
    assert out.returncode == 0 and "9" in out.stdout, out.stderr
