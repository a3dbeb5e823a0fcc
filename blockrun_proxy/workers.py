"""``serve --workers N``: N proxy processes on one port, for users who outgrow one core.

The parent binds nothing and runs no app. It starts N children, each a plain
``python -m blockrun_proxy serve <same options> --workers 1 --reuse-port``, so each
binds the port with SO_REUSEPORT and the kernel spreads new connections over them.
It forwards SIGTERM/SIGINT to every child and exits once all have exited: 0 when
each drained cleanly. A child that dies on its own makes the parent stop the others
and exit 1: restarting is the container runtime's job (one restart policy, not two).

Secrets go through a pipe: the parent read the token and the wallet key (and removed
them from its environment, keyguard.py), and each child gets its own pipe holding
them, an inherited descriptor named by ``BLOCKRUN_PROXY_SECRETS_FD`` that it reads once
and closes. The key is in no child's environment and on no command line. URLs that may
carry a password or a provider's API key (``--redis-url``, ``--rpc-url``,
``--solana-rpc-url``: options.py marks them ``by_environment``) reach the children through
their environment, never their command line, which ``ps`` shows every user. The parent
turns core dumps off too: it holds the key while it runs. The children share a fresh
``PROMETHEUS_MULTIPROC_DIR``, so ``/metrics`` on any of them reports the sum over all of
them (see metrics.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from types import FrameType

from blockrun_proxy import keyguard
from blockrun_proxy.config import METRICS_DIR_ENV, SECRETS_FD_ENV, Settings

log = logging.getLogger(__name__)

# The directory that holds the blockrun_proxy package the parent runs, put first on
# the children's PYTHONPATH so they run the same code, whatever their working directory.
PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


MICRO_USD = Decimal("0.000001")


def worker_settings(settings: Settings) -> Settings:
    """What each child runs with: a budget held in each process is split between them.

    ``--budget-usd`` is a hard limit on what the wallet may sign. Without a shared store
    (``--redis-url``) each child can only count its own calls, so each gets an equal
    share, rounded down to a micro-USD: together they never sign more than the budget.
    """
    if settings.budget_usd is None or settings.redis_url:
        return settings
    share = (settings.budget_usd / settings.workers).quantize(MICRO_USD, rounding=ROUND_DOWN)
    log.warning(
        "--workers %d without --redis-url: the budget of $%s is split, $%s per worker "
        "(one worker may reach its share while others have some left); share one budget "
        "with --redis-url",
        settings.workers,
        settings.budget_usd,
        share,
    )
    return dataclasses.replace(settings, budget_usd=share)


def worker_command(options: Sequence[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "blockrun_proxy",
        "serve",
        *options,
        "--workers",
        "1",
        "--reuse-port",
    ]


def worker_environ(environ: Mapping[str, str], metrics_dir: str) -> dict[str, str]:
    env = dict(environ)
    env[METRICS_DIR_ENV] = metrics_dir
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = PACKAGE_ROOT + (os.pathsep + path if path else "")
    return env


def supervise(
    options: Sequence[str],
    workers: int,
    secrets: keyguard.Secrets,
    *,
    extra_env: Mapping[str, str] | None = None,
) -> int:
    """Run ``workers`` children with ``options`` until they all exit; the exit code.

    ``secrets`` reach each child through a pipe; ``extra_env``: settings the children
    read from their environment instead of their command line (values that may hold a
    secret, such as a Redis URL with its password)."""
    keyguard.forbid_core_dumps()
    metrics_dir = tempfile.mkdtemp(prefix="blockrun-proxy-metrics-")
    command = worker_command(options)
    env = worker_environ({**os.environ, **(extra_env or {})}, metrics_dir)
    children: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(signum: int | None = None, frame: FrameType | None = None) -> None:
        nonlocal stopping
        stopping = True
        # os.kill, not Popen.poll/terminate: those may reap a child behind os.wait's back.
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    # Handlers first, children second: a SIGTERM arriving mid-start still reaches them all.
    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    failed = False
    try:
        for _ in range(workers):
            if stopping:
                break
            child = _start_worker(command, env, secrets)
            children[child.pid] = child
        log.info("started %d workers: %s", len(children), " ".join(map(str, children)))
        while children:
            pid, status = os.wait()
            reaped = children.pop(pid, None)
            if reaped is None:
                continue
            reaped.returncode = code = os.waitstatus_to_exitcode(status)
            _forget_worker_metrics(pid, metrics_dir)
            if not stopping:
                log.error("worker %d exited with %d on its own; stopping the others", pid, code)
                failed = True
                stop()
            elif code != 0:
                log.error("worker %d exited with %d", pid, code)
                failed = True
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 1 if failed else 0


def _start_worker(
    command: Sequence[str], env: Mapping[str, str], secrets: keyguard.Secrets
) -> subprocess.Popen[bytes]:
    pipe = keyguard.send_secrets(secrets)
    try:
        return subprocess.Popen(command, env={**env, SECRETS_FD_ENV: str(pipe)}, pass_fds=(pipe,))
    finally:
        os.close(pipe)  # the child has its own copy now


def _forget_worker_metrics(pid: int, metrics_dir: str) -> None:
    """Drop a dead worker's live gauges (open streams, in-flight) from the shared sums."""
    from prometheus_client.multiprocess import mark_process_dead

    mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]
