"""A venv shaped like the deployed image: this interpreter and the proxy's runtime
dependencies only, for the startup scenario.

The development environment's site-packages runs .pth hooks at every interpreter start
(an editable-install finder, other tools' hooks) that a deployed proxy (deploy/Dockerfile:
a wheel install) never runs; they cost tens of milliseconds and a few MiB before the
proxy's first import. The proxy still runs this checkout's code (PYTHONPATH, as for every
bench child), only its interpreter's site-packages differ. Bytecode is compiled first,
as `pip install` does for the image.
"""

from __future__ import annotations

import compileall
import hashlib
import subprocess
import sys
from pathlib import Path

import tomllib

from bench.procs import REPO_DIR, WORK_DIR

DEPLOY_VENV = WORK_DIR / "deploy-venv"
INSTALL_TIMEOUT_S = 900


def runtime_dependencies() -> list[str]:
    with open(REPO_DIR / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def deploy_python(python: str = sys.executable) -> Path:
    """The venv's interpreter, (re)installing the dependencies when pyproject changed."""
    deps = runtime_dependencies()
    stamp = DEPLOY_VENV / "deps.sha256"
    want = hashlib.sha256("\n".join(deps).encode()).hexdigest()
    binary = DEPLOY_VENV / "bin" / "python"
    if not binary.exists():
        subprocess.run([python, "-m", "venv", str(DEPLOY_VENV)], check=True, timeout=120)
    if not stamp.exists() or stamp.read_text() != want:
        subprocess.run(
            [str(DEPLOY_VENV / "bin" / "pip"), "install", "-q", *deps],
            check=True,
            timeout=INSTALL_TIMEOUT_S,
        )
        stamp.write_text(want)
    return binary


def compile_checkout() -> None:
    """Write this checkout's bytecode, as a wheel install would: without it every start
    compiles every module (bench children run with PYTHONDONTWRITEBYTECODE=1)."""
    compileall.compile_dir(str(REPO_DIR / "blockrun_proxy"), quiet=1)
