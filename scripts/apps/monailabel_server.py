"""
Serve this bundle from a MONAI Label server, to pre-segment CT scans in 3D Slicer or OHIF and fine-tune on
annotations.

MONAI Label runs in its own virtual environment (``setup_monailabel.sh``): it imports torchvision, which needs
PyPI's torch rather than ``.venv``'s CPU build. :func:`serve` builds that environment when it is missing, installs
MONAI Label's ``monaibundle`` sample app, links the bundle into the app's ``model/`` folder under its bundle name
and starts the server bound to one address. The module itself runs with ``.venv``'s Python; the server runs in
the MONAI Label environment.

Usage::

    python -m scripts.apps.monailabel_server --studies /data/ct --app_dir ~/monailabel
    python -m scripts.apps.monailabel_server --studies /data/ct --app_dir ~/monailabel --port 8000  # a fixed port
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

__all__ = [
    "BUNDLE_NAME",
    "BUNDLE_ROOT",
    "default_venv",
    "build_environment",
    "install_app",
    "free_port",
    "start_server",
    "wait_until_ready",
    "stop_server",
    "serve",
]

BUNDLE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: the folder name under ``<app>/model/``; MONAI Label names the model (``/infer/<name>``) after it
BUNDLE_NAME = "cotr_btcv_segmentation"
_VENV_VARIABLE = "COTR_MONAILABEL_VENV"


def default_venv() -> str:
    """The MONAI Label environment: ``$COTR_MONAILABEL_VENV``, else ``~/.cache/cotr-bundle/monailabel-venv``."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get(_VENV_VARIABLE) or os.path.join(cache, "cotr-bundle", "monailabel-venv")


def _python(venv: str) -> str:
    return os.path.join(venv, "bin", "python")


def build_environment(venv: str | None = None) -> str:
    """
    Build the MONAI Label environment with ``setup_monailabel.sh``; returns its folder. The script returns at
    once when the environment exists and ``requirements-monailabel.txt`` has not changed since it was built.
    """
    venv = os.path.abspath(os.path.expanduser(venv or default_venv()))
    subprocess.run(["bash", os.path.join(BUNDLE_ROOT, "setup_monailabel.sh"), venv], check=True)
    return venv


def install_app(app_dir: str, venv: str, bundle_dir: str = BUNDLE_ROOT, name: str = BUNDLE_NAME) -> str:
    """
    Install MONAI Label's ``monaibundle`` app into ``app_dir`` (once) and link ``bundle_dir`` as its model
    ``name``; returns the app folder ``app_dir/monaibundle``.

    The app ships inside the ``monailabel`` package, so this works offline. An existing link is replaced (it may
    point at another checkout); anything else at ``<app>/model/<name>`` is refused.
    """
    app = os.path.join(os.path.abspath(os.path.expanduser(app_dir)), "monaibundle")
    if not os.path.isfile(os.path.join(app, "main.py")):
        # `python -m monailabel.main`, not the `monailabel` launcher: that one runs whichever `python` is on PATH
        command = [_python(venv), "-m", "monailabel.main", "apps", "--download", "--name", "monaibundle"]
        subprocess.run([*command, "--output", os.path.dirname(app)], check=True)
    link = os.path.join(app, "model", name)
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if os.path.islink(link):
        os.remove(link)
    elif os.path.exists(link):
        raise FileExistsError(f"{link} exists and is not a link; move it away or pass another --name.")
    os.symlink(os.path.abspath(bundle_dir), link)
    return app


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (the operating system picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def start_server(
    app: str,
    studies: str,
    venv: str,
    name: str = BUNDLE_NAME,
    host: str = "127.0.0.1",
    port: int = 0,
    log_file: str | None = None,
    conf: Sequence[tuple[str, str]] = (),
) -> tuple[subprocess.Popen, str]:
    """
    Start ``monailabel start_server`` for model ``name`` of ``app`` on ``studies``; returns the process and the
    server's URL. It does not wait for the server to answer (see :func:`wait_until_ready`).

    The server leads its own process group, so :func:`stop_server` also ends the training processes it starts.

    Args:
        app: the app folder (:func:`install_app`).
        studies: folder of images (NIfTI); MONAI Label keeps labels in ``studies/labels/final``.
        venv: the MONAI Label environment (:func:`build_environment`).
        name: the model, a folder in ``app/model``.
        host: address to bind; keep ``127.0.0.1`` unless other machines must reach the server.
        port: TCP port; 0 picks a free one.
        log_file: file for the server's output; default: this process's stdout and stderr.
        conf: further ``--conf KEY VALUE`` pairs for the app.
    """
    port = port or free_port(host)
    # zoo_source other than "monaihosting": use the local bundle instead of downloading one (the server exits
    # offline); sam2 false: the SAM2 models would be downloaded at start-up
    settings = [("models", name), ("zoo_source", "local"), ("sam2", "false"), *conf]
    command = [_python(venv), "-m", "monailabel.main", "start_server", "--app", app, "--studies", studies]
    command += ["--host", host, "--port", str(port)]
    for key, value in settings:
        command += ["--conf", key, str(value)]
    output = open(log_file, "ab") if log_file else None
    try:
        # run from the app folder: nothing of this repository (its `scripts` and `tests` packages) on sys.path
        process = subprocess.Popen(
            command, cwd=app, stdout=output, stderr=subprocess.STDOUT if output else None, start_new_session=True
        )
    finally:
        if output:
            output.close()
    return process, f"http://{host}:{port}"


def wait_until_ready(url: str, process: subprocess.Popen, timeout: float = 300.0) -> None:
    """Wait until ``GET url/info/`` answers 200; raises ``RuntimeError`` if the server exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"MONAI Label server exited with status {process.returncode} before answering.")
        try:
            with urllib.request.urlopen(f"{url}/info/", timeout=10) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not listening yet
        time.sleep(1.0)
    raise RuntimeError(f"MONAI Label server at {url} did not answer within {timeout:.0f} s.")


def stop_server(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """End the server and its process group (training runs included): SIGTERM, then SIGKILL after ``timeout``."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass  # ended between poll() and killpg()


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def serve(
    studies: str,
    app_dir: str = "~/monailabel",
    venv: str | None = None,
    bundle_dir: str = BUNDLE_ROOT,
    name: str = BUNDLE_NAME,
    host: str = "127.0.0.1",
    port: int = 0,
) -> None:
    """
    Build the MONAI Label environment if needed, install the app, link the bundle and serve until Ctrl-C.

    Args:
        studies: folder of CT images (NIfTI) to annotate; labels go to ``studies/labels/final``.
        app_dir: where the ``monaibundle`` app is installed (``app_dir/monaibundle``).
        venv: the MONAI Label environment; default :func:`default_venv`.
        bundle_dir: the bundle to serve (it needs ``models/model.pt``); default this repository.
        name: the model's name in MONAI Label.
        host: address to bind; ``0.0.0.0`` serves other machines too.
        port: TCP port; 0 picks a free one.
    """
    if not os.path.isfile(os.path.join(bundle_dir, "models", "model.pt")):
        raise FileNotFoundError(f"{bundle_dir}/models/model.pt not found: train the bundle first (README, 'Train').")
    venv = build_environment(venv)
    app = install_app(app_dir, venv, bundle_dir, name)
    process, url = start_server(app, os.path.abspath(os.path.expanduser(studies)), venv, name, host, port)
    # the server leads its own process group, so Ctrl-C reaches only this process; being terminated or losing the
    # terminal must stop the server too, through the `finally` below
    for terminating in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(terminating, _exit_on_signal)
    try:
        wait_until_ready(url, process)
        print(f"MONAI Label serves '{name}' at {url} (3D Slicer: MONAI Label module, server {url}); Ctrl-C stops it.")
        process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_server(process)


if __name__ == "__main__":
    from scripts.data.checks import run_data_cli

    run_data_cli(serve)
