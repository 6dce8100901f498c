#!/usr/bin/env bash
# Builds the virtual environment that runs a MONAI Label server for this bundle (about 8 GB, 3-5 minutes), and
# reuses it while requirements-monailabel.txt is unchanged. It is separate from .venv: MONAI Label imports
# torchvision, which needs PyPI's torch, not .venv's CPU torch 2.13.0.
# Usage: bash setup_monailabel.sh [VENV_DIR]
#   VENV_DIR defaults to $COTR_MONAILABEL_VENV, else ~/.cache/cotr-bundle/monailabel-venv (outside the clone, so
#   that it survives fresh clones). Prints the environment's folder last.
set -euo pipefail
cd "$(dirname "$0")"
venv="${1:-${COTR_MONAILABEL_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/cotr-bundle/monailabel-venv}}"
stamp="$venv/.requirements-monailabel.sha256"
wanted="$(sha256sum requirements-monailabel.txt | cut -d' ' -f1)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
    echo "$venv"
    exit 0
fi
# a folder without pyvenv.cfg is not ours to delete
if [ -e "$venv" ] && [ ! -f "$venv/pyvenv.cfg" ]; then
    echo "setup_monailabel.sh: $venv exists and is not a virtual environment; remove it or pass another folder." >&2
    exit 1
fi
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
python3 -m venv "$venv"
# torch first, at the pinned version, as setup.sh does: the resolver would otherwise pick the newest torch
"$venv/bin/python" -m pip install -q --disable-pip-version-check "$(grep -E '^torch==' requirements-monailabel.txt)"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r requirements-monailabel.txt
# written last: an interrupted build has no stamp and is rebuilt next time
echo "$wanted" > "$stamp"
echo "$venv"
