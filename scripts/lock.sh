#!/usr/bin/env bash
# Refresh requirements/lock.txt: exact versions of every run and test dependency (the default
# install plus [dev]) for CPython 3.11 on Linux x86_64, the CI and Docker target. scripts/test.sh,
# .ci/run (through it) and the Dockerfile's CPU image install with `-c requirements/lock.txt`, so
# a new release on PyPI changes nothing until this script is run and the result committed.
# Needs uv (pip install uv). Usage: scripts/lock.sh [--upgrade | --upgrade-package NAME ...]
set -euo pipefail
cd "$(dirname "$0")/.."
UV="${UV:-uv}"
"$UV" pip compile pyproject.toml --extra dev \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --index-url https://pypi.org/simple \
  --custom-compile-command scripts/lock.sh \
  --output-file requirements/lock.txt "$@"
