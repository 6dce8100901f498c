"""
Check that every package ``configs/metadata.json`` declares has a PyPI wheel for CPython 3.10, 3.11 and 3.12.

The model zoo's CI installs a bundle's declared packages as ``name==version`` lines: ``monai_version``,
``pytorch_version``, ``numpy_version`` and each entry of ``required_packages_version`` and
``optional_packages_version``. This script asks PyPI for each of them, per Python version, with
``pip download --no-deps --only-binary=:all: --python-version X`` into a temporary folder. It ignores this machine's
pip configuration and local wheel folders (``PIP_CONFIG_FILE`` set to the null device, ``PIP_*`` variables dropped),
so a wheel that exists only here does not count. torch is looked up with ``pip index versions`` instead: its wheels
are several hundred MB each.

``setup.sh`` keeps its own tested environment (``requirements.txt``, ``constraints.txt``); this checks only what the
metadata declares. It needs the network, so it is not part of the test suite. Exit status 1 when anything is missing.

Usage::

    .venv/bin/python .ci/check_pins.py [--pythons 3.10 3.11 3.12] [--index_url https://pypi.org/simple]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

BUNDLE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METADATA = os.path.join(BUNDLE_ROOT, "configs", "metadata.json")
#: packages looked up by index instead of downloaded (multi-hundred-MB wheels)
INDEX_ONLY = ("torch",)


def declared_packages(metadata_file: str = METADATA) -> dict[str, str]:
    """``{name: version}`` as the zoo's CI installs them from ``metadata_file``."""
    with open(metadata_file) as f:
        metadata = json.load(f)
    packages = {}
    for key, name in (("monai_version", "monai"), ("pytorch_version", "torch"), ("numpy_version", "numpy")):
        if key in metadata:
            packages[name] = metadata[key]
    for key in ("required_packages_version", "optional_packages_version"):
        packages.update(metadata.get(key, {}))
    empty = [name for name, version in packages.items() if not str(version).strip()]
    if empty:
        raise ValueError(f"{metadata_file}: no version for {', '.join(empty)} (the zoo installs name==version).")
    return packages


def _pip(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # no local indexes, find-links or constraints
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env, timeout=900)


def check(name: str, version: str, python: str, index_url: str, download_dir: str) -> str | None:
    """None when ``name==version`` has a wheel for CPython ``python`` on ``index_url``, else the reason."""
    common = ["--only-binary=:all:", "--python-version", python, "--index-url", index_url]
    if name in INDEX_ONLY:
        result = _pip("index", "versions", name, *common)
        for line in result.stdout.splitlines():
            if line.startswith("Available versions:"):
                available = [v.strip() for v in line.split(":", 1)[1].split(",")]
                return None if version in available else f"no wheel of {version} (newest: {available[0]})"
        return (result.stderr.strip().splitlines() or ["no wheel at all"])[-1]
    result = _pip("download", "--no-deps", "--dest", download_dir, *common, f"{name}=={version}")
    return None if result.returncode == 0 else (result.stderr.strip().splitlines() or ["pip failed"])[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--pythons", nargs="+", default=["3.10", "3.11", "3.12"])
    parser.add_argument("--index_url", default="https://pypi.org/simple")
    parser.add_argument("--metadata", default=METADATA)
    args = parser.parse_args(argv)
    packages = declared_packages(args.metadata)
    failures = []
    with tempfile.TemporaryDirectory() as download_dir:
        for python in args.pythons:
            for name, version in packages.items():
                reason = check(name, version, python, args.index_url, download_dir)
                print(
                    f"python {python}  {name}=={version}: {'ok' if reason is None else 'MISSING - ' + reason}",
                    flush=True,
                )
                if reason is not None:
                    failures.append(f"{name}=={version} on Python {python}: {reason}")
    if failures:
        print(f"\n{len(failures)} declared package(s) cannot be installed from wheels:", *failures, sep="\n  ")
        return 1
    print(f"\nall {len(packages)} declared packages have wheels for Python {', '.join(args.pythons)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
