"""Run a Python script as rank 0 of a one-process gloo group: what Ray Train's TorchConfig sets up in
each worker, for tests of DeepSpeed engines without Ray. The script reads the group's port from
sys.argv[1] and calls dist.init_process_group itself (after the import of torch.distributed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import free_port

REPO = Path(__file__).resolve().parents[1]


def run_as_rank_zero(script: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
    return subprocess.run([sys.executable, "-c", script, str(free_port())], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)
