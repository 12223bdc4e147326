#!/usr/bin/env bash
# The test command: set up the environment, lint and format check, type check (mypy, the
# package only), run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy autoseg
if [ $# -eq 0 ]; then
  # The suite's work folders peak at ~4 GB in the temporary folder (a passed test's are removed
  # as it ends: setup.cfg tmp_path_retention_policy): with less free, tests fail on a full disk.
  free_kb=$(df -Pk "${TMPDIR:-/tmp}" | awk 'NR == 2 {print $4}')
  if [ "${free_kb:-0}" -lt $((5 * 1024 * 1024)) ]; then
    echo "warning: $((free_kb / 1024)) MiB free in ${TMPDIR:-/tmp}; the suite needs ~5 GB there" \
      "(free some space or point TMPDIR at a larger disk)" >&2
  fi
  # The whole suite (tests/ and the package's doctests), with coverage of the package, child
  # processes included, and its floor (pyproject.toml [tool.coverage.report] fail_under). One
  # pytest-xdist worker per core (at most 4), each test file on one worker (its module
  # fixtures built once; xdist 3.8's loadgroup cannot group under pytest 9.2, whose node ids
  # it no longer rewrites); tests/conftest.py keeps every worker on one torch thread.
  .venv/bin/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile \
    --cov=autoseg --cov-report=term --durations=15
else
  .venv/bin/python -m pytest -q "$@"
fi
