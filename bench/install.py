"""System tools the bench needs (wrk always, nginx for the relay baseline), via apt."""

from __future__ import annotations

import os
import shutil
import subprocess

from bench.nginx import nginx_binary

APT_TIMEOUT_S = 600


def missing_tools(*, nginx: bool, wrk: bool) -> list[str]:
    missing = ["wrk"] if wrk and shutil.which("wrk") is None else []
    if nginx and nginx_binary() is None:
        missing.append("nginx")
    return missing


def ensure_tools(*, nginx: bool, wrk: bool, install: bool = True) -> None:
    """Install the missing Debian packages with apt-get (as root), or explain what is missing."""
    missing = missing_tools(nginx=nginx, wrk=wrk)
    if not missing:
        return
    if not install or os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit(f"missing {', '.join(missing)}: apt-get install -y {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env, timeout=APT_TIMEOUT_S)
    subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", *missing],
        check=True,
        env=env,
        timeout=APT_TIMEOUT_S,
    )
