"""Benchmark nnU-Net v2's fingerprint + planning against ``autoseg plan``.

Both tools start from the same Medical Segmentation Decathlon dataset (default:
``/work/shared/data/hippocampus``), copied to a temporary folder first so that
nothing is ever written next to the source data.

nnU-Net side (peer venv made by ``benchmarks/setup_peer.sh``):

* ``nnUNetv2_convert_MSD_dataset`` into a temporary ``nnUNet_raw`` (not timed);
* ``nnUNetv2_extract_fingerprint -d ID -np WORKERS`` (timed);
* ``nnUNetv2_plan_experiment -d ID`` (timed);
* the preprocessed folder is removed between repeats.

autoseg side: ``autoseg plan <copy> --work-dir <fresh tmp> --workers WORKERS``.

Each side runs ``--repeats`` timed times, then once more untimed for memory.
Timed runs record the wall time (``time.perf_counter``, start-up and imports
included) and the largest single-process max RSS of the tree, from
``/usr/bin/time -v`` (no sampling, so no overhead; sampled from /proc/PID/statm
if GNU time is missing).  The untimed memory pass also samples the summed PSS
of the whole process tree from /proc/PID/smaps_rollup every ``--pss-ms``:
PSS rather than RSS because summed RSS counts the shared pages of forked
children many times, and untimed because reading smaps costs CPU.

Run with the project interpreter::

    /work/main/.venv/bin/python benchmarks/bench_plan.py [--repeats 3] [--workers 2]

The markdown table is printed to stdout and written to
``benchmarks/results/plan_hippocampus.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

LOG = logging.getLogger("bench_plan")

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_DATA = Path("/work/shared/data/hippocampus")
DEFAULT_PEER_VENV = BENCH_DIR / ".peer-venv"
DEFAULT_AUTOSEG = str(REPO_ROOT / ".venv" / "bin" / "autoseg")
DEFAULT_OUTPUT = BENCH_DIR / "results" / "plan_hippocampus.md"
GNU_TIME = Path("/usr/bin/time")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MAXRSS_RE = re.compile(r"Maximum resident set size \(kbytes\):\s*(\d+)")


class BenchmarkError(RuntimeError):
    """A benchmark step could not be run."""


# --------------------------------------------------------------------------- #
# measuring one command
# --------------------------------------------------------------------------- #
def _children(pid: int) -> list[int]:
    """Return the direct children of ``pid`` (all its threads), [] if it is gone."""
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                kids.extend(int(x) for x in fh.read().split())
        except OSError:
            continue
    return kids


def _descendants(root: int) -> list[int]:
    """Return every descendant pid of ``root`` (not ``root`` itself)."""
    out: list[int] = []
    stack = _children(root)
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(_children(pid))
    return out


def _rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (cheap: /proc/PID/statm), 0 if gone."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def _pss_bytes(pid: int) -> int:
    """Proportional set size of ``pid`` in bytes (/proc/PID/smaps_rollup), 0 if gone.

    PSS splits each shared page among the processes that map it, so summing it
    over a tree of forked workers does not count their shared pages many times
    (summed RSS does: transient fork children of a torch process each show
    ~400 MiB of RSS).  Reading it walks the page tables: ~10 ms for a process
    that imported torch, which is why it is only sampled in the untimed pass.
    """
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


class TreeMemorySampler:
    """Sample the memory of all descendants of this process in a thread.

    Use as a context manager around a ``subprocess.run`` call.  Records the
    largest single-process RSS (``max_rss_bytes``) and, if ``pss`` is set, the
    largest summed PSS of the whole tree (``tree_pss_bytes``).
    """

    def __init__(self, interval_s: float, pss: bool) -> None:
        """Poll every ``interval_s`` seconds; sum PSS over the tree if ``pss``."""
        self.interval_s = interval_s
        self.pss = pss
        self.max_rss_bytes = 0
        self.tree_pss_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        pids = _descendants(os.getpid())
        self.max_rss_bytes = max([self.max_rss_bytes, *(_rss_bytes(p) for p in pids)])
        if self.pss:
            self.tree_pss_bytes = max(self.tree_pss_bytes, sum(_pss_bytes(p) for p in pids))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> TreeMemorySampler:
        """Start sampling."""
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop sampling and wait for the thread."""
        self._stop.set()
        self._thread.join()


@dataclass
class Measurement:
    """Wall time and memory of one command run (0 where not measured)."""

    wall_s: float
    max_rss_bytes: int
    tree_pss_bytes: int = 0


def run_checked(
    cmd: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` with ``check=True``; on failure log its output and raise."""
    LOG.debug("running: %s", shlex.join(cmd))
    try:
        return subprocess.run(list(cmd), check=True, capture_output=True, text=True, env=env, cwd=cwd)
    except FileNotFoundError as err:
        raise BenchmarkError(f"command not found: {cmd[0]}") from err
    except subprocess.CalledProcessError as err:
        LOG.error(
            "command failed (exit %s): %s\n--- stdout ---\n%s\n--- stderr ---\n%s",
            err.returncode,
            shlex.join(cmd),
            _tail(err.stdout),
            _tail(err.stderr),
        )
        raise BenchmarkError(f"command failed: {shlex.join(cmd)}") from err


def _tail(text: str | None, lines: int = 60) -> str:
    """Last ``lines`` lines of ``text``."""
    return "\n".join((text or "").splitlines()[-lines:])


def have_gnu_time() -> bool:
    """Whether ``/usr/bin/time`` (GNU time, for ``-v``) can be used."""
    return GNU_TIME.is_file() and os.access(GNU_TIME, os.X_OK)


def measure(
    cmd: Sequence[str],
    env: dict[str, str],
    cwd: Path | None = None,
    pss_interval_s: float | None = None,
) -> Measurement:
    """Run ``cmd`` once; return its wall time and memory.

    The largest single-process max RSS of the tree comes from ``/usr/bin/time
    -v`` (wait4 rusage, no sampling, negligible overhead).  Without GNU time it
    is sampled from /proc every 20 ms instead.  With ``pss_interval_s`` the
    tree's summed PSS is sampled too: that costs CPU, so use it only for runs
    whose wall time is not reported.
    """
    use_time = have_gnu_time()
    full = [str(GNU_TIME), "-v", *cmd] if use_time else list(cmd)
    sampler: TreeMemorySampler | None = None
    if pss_interval_s is not None:
        sampler = TreeMemorySampler(pss_interval_s, pss=True)
    elif not use_time:
        sampler = TreeMemorySampler(0.02, pss=False)
    with sampler if sampler is not None else contextlib.nullcontext():
        start = time.perf_counter()
        proc = run_checked(full, env=env, cwd=cwd)
        wall = time.perf_counter() - start
    max_rss = sampler.max_rss_bytes if sampler is not None else 0
    if use_time:
        found = MAXRSS_RE.findall(proc.stderr)
        if found:
            max_rss = max(max_rss, int(found[-1]) * 1024)
    pss = sampler.tree_pss_bytes if sampler is not None else 0
    LOG.info(
        "  %-30s %7.2f s  max RSS %7.1f MiB%s",
        Path(cmd[0]).name,
        wall,
        max_rss / 2**20,
        f"  tree PSS {pss / 2**20:7.1f} MiB" if pss_interval_s is not None else "",
    )
    return Measurement(wall, max_rss, pss)


# --------------------------------------------------------------------------- #
# the two sides
# --------------------------------------------------------------------------- #
@dataclass
class StepResult:
    """All runs of one step of one tool: timed repeats plus the memory pass."""

    tool: str
    step: str
    runs: list[Measurement] = field(default_factory=list)
    memory: Measurement | None = None

    @property
    def walls(self) -> list[float]:
        """Wall seconds of each timed repeat."""
        return [m.wall_s for m in self.runs]

    @property
    def max_rss_mib(self) -> float:
        """Largest single-process max RSS over all runs, MiB."""
        runs = [*self.runs, *([self.memory] if self.memory else [])]
        return max((m.max_rss_bytes for m in runs), default=0) / 2**20

    @property
    def tree_pss_mib(self) -> float | None:
        """Peak summed PSS of the tree in the memory pass, MiB (None if not run)."""
        return self.memory.tree_pss_bytes / 2**20 if self.memory else None


def _task_name(data: Path) -> str:
    """A one-word dataset name for nnU-Net's ``TaskXX_Name`` folder."""
    try:
        name = json.loads((data / "dataset.json").read_text()).get("name", "")
    except (OSError, ValueError):
        name = ""
    name = re.sub(r"[^A-Za-z0-9]", "", str(name))
    return name or "Dataset"


def nnunet_env(base: Path, workers: int, peer_bin: Path) -> dict[str, str]:
    """Environment for nnU-Net commands: temp data folders, peer venv first on PATH."""
    env = dict(os.environ)
    env.update(
        nnUNet_raw=str(base / "nnUNet_raw"),
        nnUNet_preprocessed=str(base / "nnUNet_preprocessed"),
        nnUNet_results=str(base / "nnUNet_results"),
        nnUNet_def_n_proc=str(workers),
        PATH=f"{peer_bin}{os.pathsep}{env.get('PATH', '')}",
    )
    env.pop("VIRTUAL_ENV", None)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    return env


def prepare_nnunet(data: Path, base: Path, dataset_id: int, workers: int, peer_bin: Path) -> dict[str, str]:
    """Copy ``data`` as an MSD task and convert it to nnU-Net's raw layout (not timed)."""
    env = nnunet_env(base, workers, peer_bin)
    task = base / "msd" / f"Task{dataset_id:02d}_{_task_name(data)}"
    shutil.copytree(data, task)
    (task / "imagesTs").mkdir(exist_ok=True)  # the converter insists on it
    ds_json = task / "dataset.json"
    meta = json.loads(ds_json.read_text())
    if "test" not in meta:  # the converter deletes this key unconditionally
        meta["test"] = []
        ds_json.write_text(json.dumps(meta, indent=1))
    LOG.info("converting %s to nnU-Net raw layout (not timed)", task.name)
    run_checked(
        [
            str(peer_bin / "nnUNetv2_convert_MSD_dataset"),
            "-i",
            str(task),
            "-overwrite_id",
            str(dataset_id),
            "-np",
            str(workers),
        ],
        env=env,
    )
    return env


def _passes(repeats: int, memory_pass: bool) -> list[tuple[str, bool]]:
    """Labels of the runs to make and whether each is the (untimed) memory pass."""
    runs = [(f"repeat {i + 1}/{repeats}", False) for i in range(repeats)]
    return [*runs, ("memory pass (untimed)", True)] if memory_pass else runs


def bench_nnunet(
    data: Path,
    base: Path,
    dataset_id: int,
    workers: int,
    repeats: int,
    peer_bin: Path,
    pss_interval_s: float | None,
    verify: bool = False,
) -> list[StepResult]:
    """Time nnU-Net's fingerprint extraction (optionally with its integrity check) and planning."""
    env = prepare_nnunet(data, base, dataset_id, workers, peer_bin)
    pre = Path(env["nnUNet_preprocessed"])
    fp = StepResult("nnU-Net v2", "extract_fingerprint")
    plan = StepResult("nnU-Net v2", "plan_experiment")
    commands = {
        fp.step: [
            str(peer_bin / "nnUNetv2_extract_fingerprint"),
            "-d",
            str(dataset_id),
            "-np",
            str(workers),
            *(["--verify_dataset_integrity"] if verify else []),
        ],
        plan.step: [str(peer_bin / "nnUNetv2_plan_experiment"), "-d", str(dataset_id)],
    }
    for label, is_memory in _passes(repeats, pss_interval_s is not None):
        LOG.info("nnU-Net %s", label)
        shutil.rmtree(pre, ignore_errors=True)
        pre.mkdir(parents=True)
        for res in (fp, plan):
            m = measure(
                commands[res.step],
                env,
                cwd=base,
                pss_interval_s=pss_interval_s if is_memory else None,
            )
            if is_memory:
                res.memory = m
            else:
                res.runs.append(m)
        if not list(pre.glob("Dataset*/nnUNetPlans.json")):
            raise BenchmarkError(f"nnU-Net wrote no nnUNetPlans.json under {pre}")
    return [fp, plan]


def bench_autoseg(
    data: Path,
    base: Path,
    workers: int,
    repeats: int,
    autoseg: list[str],
    pss_interval_s: float | None,
    keep: bool,
) -> list[StepResult]:
    """Time ``autoseg plan`` on a private copy of ``data``, a fresh work folder each run."""
    copy = base / "data" / data.name
    shutil.copytree(data, copy)
    env = dict(os.environ)
    step = StepResult("autoseg", "plan")
    for i, (label, is_memory) in enumerate(_passes(repeats, pss_interval_s is not None)):
        LOG.info("autoseg %s", label)
        work = base / f"work_{i}"
        cmd = [*autoseg, "plan", str(copy), "--work-dir", str(work)]
        cmd += ["--preprocess-workers", str(workers)]
        m = measure(cmd, env, cwd=base, pss_interval_s=pss_interval_s if is_memory else None)
        if is_memory:
            step.memory = m
        else:
            step.runs.append(m)
        made = sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file())
        if not made:
            raise BenchmarkError(f"autoseg plan wrote nothing under {work}")
        LOG.info("  autoseg wrote %d file(s): %s", len(made), ", ".join(made[:8]))
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return [step]


# --------------------------------------------------------------------------- #
# report
# --------------------------------------------------------------------------- #
def _total(tool: str, steps: list[StepResult]) -> StepResult:
    """Per-repeat sum of the steps' wall times; memory is the max over steps."""
    total = StepResult(tool, "total")
    for runs in zip(*(s.runs for s in steps), strict=True):
        wall = sum(m.wall_s for m in runs)
        total.runs.append(Measurement(wall, max(m.max_rss_bytes for m in runs)))
    mems = [s.memory for s in steps if s.memory is not None]
    if mems:
        total.memory = Measurement(
            sum(m.wall_s for m in mems),
            max(m.max_rss_bytes for m in mems),
            max(m.tree_pss_bytes for m in mems),
        )
    return total


def _row(res: StepResult) -> str:
    """One markdown table row."""
    walls = res.walls
    pss = res.tree_pss_mib
    return (
        f"| {res.tool} | {res.step} | {statistics.median(walls):.2f} | "
        f"{min(walls):.2f} | {res.max_rss_mib:.0f} | "
        f"{'n/a' if pss is None else f'{pss:.0f}'} |"
    )


def _peer_versions(peer_python: Path) -> str:
    """Versions of nnunetv2 and torch in the peer venv."""
    code = (
        "import importlib.metadata as m;"
        "print(', '.join(f'{p} {m.version(p)}' for p in ('nnunetv2', 'torch')))"
    )
    try:
        return run_checked([str(peer_python), "-c", code]).stdout.strip()
    except BenchmarkError:
        return "unknown"


def _autoseg_version(autoseg: list[str]) -> str:
    """``autoseg --version`` output, or 'unknown'."""
    try:
        out = subprocess.run([*autoseg, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if out.returncode == 0 and text else "unknown"


def _cpu_model() -> str:
    """CPU model name from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def render(
    args: argparse.Namespace,
    n_cases: int,
    results: list[StepResult],
    versions: str,
) -> str:
    """Build the markdown report."""
    rss_how = (
        "`/usr/bin/time -v` (wait4 rusage)" if have_gnu_time() else "/proc/PID/statm sampled every 20 ms"
    )
    pss_how = (
        f"peak of the summed PSS (/proc/PID/smaps_rollup) of the whole process "
        f"tree, sampled every {args.pss_ms:g} ms in one extra untimed run"
        if not args.no_memory_pass
        else "not measured (--no-memory-pass)"
    )
    nnunet = [r for r in results if r.tool == "nnU-Net v2"]
    autoseg = [r for r in results if r.tool == "autoseg"]
    lines = [
        f"## plan: fingerprint + planning on {args.data.name} ({n_cases} cases)",
        "",
        f"- repeats: {args.repeats}, workers: {args.workers} (nnU-Net `-np`, autoseg `--workers`)",
        f"- machine: {os.cpu_count()} CPUs ({_cpu_model()}), python {platform.python_version()}",
        f"- versions: {versions}",
        "- wall s: `time.perf_counter` around the command, including interpreter "
        "start-up and imports; nnU-Net's MSD conversion is not timed",
        "- dataset integrity check: autoseg plan always verifies; nnU-Net "
        + (
            "verifies too (`--verify_dataset_integrity`)"
            if args.nnunet_verify
            else "does not (its default; `--nnunet-verify` turns it on)"
        ),
        f"- peak RSS MiB: largest max RSS of any single process of the tree, from "
        f"{rss_how}, max over all runs",
        f"- tree PSS MiB: {pss_how}",
        "",
        "| tool | step | wall s (median) | wall s (min) | peak RSS MiB | tree PSS MiB |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    nn_total = _total("nnU-Net v2", nnunet) if nnunet else None
    as_total = autoseg[0] if autoseg else None
    lines += [_row(r) for r in nnunet]
    if nn_total is not None:
        lines.append(_row(nn_total))
    lines += [_row(r) for r in autoseg]
    lines.append("")
    if nn_total is not None and as_total is not None:
        med = statistics.median(nn_total.walls) / statistics.median(as_total.walls)
        best = min(nn_total.walls) / min(as_total.walls)
        lines.append(f"**nnU-Net total / autoseg total: {med:.2f}x (medians), {best:.2f}x (mins)**")
    else:
        lines.append("nnU-Net total / autoseg total: n/a (one side skipped)")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- #
# main
# --------------------------------------------------------------------------- #
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--data", type=Path, default=DEFAULT_DATA, help="MSD-layout dataset folder")
    add("--repeats", type=int, default=3, help="timed runs per side (default 3)")
    add("--workers", type=int, default=2, help="worker processes for both tools")
    add(
        "--autoseg",
        default=DEFAULT_AUTOSEG,
        help="autoseg command, split like a shell would (default: the project venv's)",
    )
    add("--peer-venv", type=Path, default=DEFAULT_PEER_VENV, help="nnU-Net venv")
    add("--dataset-id", type=int, default=4, help="nnU-Net dataset id (default 4)")
    add("--only", choices=("nnunet", "autoseg"), default=None, help="run one side")
    add("--output", type=Path, default=DEFAULT_OUTPUT, help="markdown file to write")
    add("--tmp-dir", type=Path, default=None, help="parent of the scratch folder")
    add("--pss-ms", type=float, default=50.0, help="PSS sampling interval, ms")
    add("--no-memory-pass", action="store_true", help="skip the untimed PSS run")
    add(
        "--nnunet-verify",
        action="store_true",
        help="pass --verify_dataset_integrity to nnUNetv2_extract_fingerprint "
        "(autoseg plan always verifies the dataset)",
    )
    add("--keep", action="store_true", help="keep the scratch folder")
    add("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.workers < 1 or args.pss_ms <= 0:
        p.error("--repeats, --workers and --pss-ms must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, write the report and print the markdown table."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    data = args.data.resolve()
    try:
        meta = json.loads((data / "dataset.json").read_text())
    except (OSError, ValueError) as err:
        LOG.error("cannot read %s/dataset.json: %s", data, err)
        return 2
    n_cases = len(meta.get("training", []))
    peer_bin = args.peer_venv.resolve() / "bin"
    autoseg_cmd = shlex.split(args.autoseg)
    run_nnunet = args.only in (None, "nnunet")
    run_autoseg = args.only in (None, "autoseg")
    if run_nnunet and not (peer_bin / "nnUNetv2_plan_experiment").exists():
        LOG.error("no nnU-Net in %s: run benchmarks/setup_peer.sh first", args.peer_venv)
        return 2
    if run_autoseg:
        try:
            run_checked([*autoseg_cmd, "plan", "--help"])
        except BenchmarkError:
            LOG.error("`%s plan --help` failed: is the autoseg CLI installed?", args.autoseg)
            return 2
    pss_s = None if args.no_memory_pass else args.pss_ms / 1000

    scratch = Path(tempfile.mkdtemp(prefix="bench_plan_", dir=args.tmp_dir))
    LOG.info("scratch folder: %s", scratch)
    results: list[StepResult] = []
    try:
        if run_nnunet:
            results += bench_nnunet(
                data,
                scratch / "nnunet",
                args.dataset_id,
                args.workers,
                args.repeats,
                peer_bin,
                pss_s,
                verify=args.nnunet_verify,
            )
        if run_autoseg:
            results += bench_autoseg(
                data,
                scratch / "autoseg",
                args.workers,
                args.repeats,
                autoseg_cmd,
                pss_s,
                args.keep,
            )
    except BenchmarkError as err:
        LOG.error("%s", err)
        return 1
    finally:
        if args.keep:
            LOG.info("kept scratch folder %s", scratch)
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    versions = []
    if run_nnunet:
        versions.append(_peer_versions(peer_bin / "python"))
    if run_autoseg:
        version = _autoseg_version(autoseg_cmd)
        versions.append(version if version.startswith("autoseg") else f"autoseg {version}")
    report = render(args, n_cases, results, "; ".join(versions))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    print(report, end="")
    LOG.info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
