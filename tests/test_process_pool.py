"""The benchmarks' process pool ends with its parent when the parent gets SIGTERM."""

import signal
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = r"""
import time
from factory.process_pool import process_pool

with process_pool(2) as pool:
    waiting = pool.map_async(time.sleep, [600, 600], chunksize=1)
    print(" ".join(str(p.pid) for p in pool._pool), flush=True)
    waiting.get()
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has finished; only its exit status waits to be read


def test_sigterm_to_the_parent_ends_the_pool_processes():
    parent = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    children = [int(pid) for pid in parent.stdout.readline().split()]
    assert len(children) == 2 and all(alive(pid) for pid in children)
    time.sleep(0.5)  # the pool's processes are inside time.sleep by now
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=30) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in children), "pool processes outlived their parent"
