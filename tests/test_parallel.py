"""Worker pools started from a process that has already run torch (training, then evaluation, in
one Python process) must not hang: a child forked from it hung at its first torch operation. Its
workers must not outlive a parent killed with ``kill -9``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest


def test_pool_after_torch_threads_does_not_hang(tmp_path: Path) -> None:
    (tmp_path / "work_fn.py").write_text(
        textwrap.dedent("""
        import torch

        def work(n):
            x = torch.ones(64, 64, 64)
            return float((x @ x).sum()) + n
    """)
    )
    script = textwrap.dedent("""
        import torch
        from autoseg._parallel import parallel_map
        from work_fn import work

        if __name__ == "__main__":
            x = torch.randn(128, 128, 64)
            (x @ x.transpose(1, 2)).sum()  # the intra-op thread pool is running now
            print(parallel_map(work, [0, 1, 2, 3], workers=2, desc="t"))
    """)
    (tmp_path / "main.py").write_text(script)
    run = subprocess.run(
        [sys.executable, "main.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str([64.0**4 + n for n in range(4)])


@pytest.mark.parametrize("with_torch", [False, True], ids=["fork", "forkserver"])
def test_workers_do_not_outlive_a_killed_parent(tmp_path: Path, with_torch: bool) -> None:
    """``kill -9`` of the process running a pool: its workers (children of the process with
    ``fork``, of the fork server with ``forkserver``) notice and exit instead of working on,
    writing into folders that a rerun uses."""
    (tmp_path / "slow_fn.py").write_text(
        textwrap.dedent("""
        import os, time
        from pathlib import Path

        def slow(n):
            Path(f"started_{os.getpid()}").touch()
            time.sleep(60)
            return n
    """)
    )
    script = textwrap.dedent(f"""
        {"import torch" if with_torch else ""}
        from autoseg._parallel import parallel_map
        from slow_fn import slow

        if __name__ == "__main__":
            parallel_map(slow, [0, 1, 2, 3], workers=2, desc="t")
    """)
    (tmp_path / "main.py").write_text(script)
    proc = subprocess.Popen([sys.executable, "main.py"], cwd=tmp_path, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("started_*"))) < 2:
        assert proc.poll() is None
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.05)
    workers = [int(p.name.split("_")[1]) for p in tmp_path.glob("started_*")]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 15
    while any(_running(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = [w for w in workers if _running(w)]
    for w in alive:
        os.kill(w, signal.SIGKILL)
    assert not alive, "pool workers outlived the killed process"


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
