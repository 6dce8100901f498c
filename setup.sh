#!/usr/bin/env bash
# Creates .venv with everything the bundle needs; `--dev` adds the test and export tools.
# torch is installed first and pinned: a looser requirement pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
requirements=requirements.txt
[ "${1:-}" = "--dev" ] && requirements=requirements-dev.txt
.venv/bin/python -m pip install -q --disable-pip-version-check -r "$requirements" -c constraints.txt
