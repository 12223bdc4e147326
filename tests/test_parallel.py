"""Worker pools started from a process that has already run torch (training, then evaluation, in
one Python process) must not hang: a child forked from it hung at its first torch operation."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


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
