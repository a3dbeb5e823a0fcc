"""nginx as the baseline relay: one worker, unbuffered proxy_pass, keepalive upstream.

The config keeps everything (pid, temp paths, error log) under the bench work
dir, runs in the foreground (`daemon off`) so the bench owns the process, and
answers `/healthz` itself so readiness does not depend on the upstream.
"""

from __future__ import annotations

import resource
import shutil
from pathlib import Path

from bench.procs import LOOPBACK, WORK_DIR, Service, child_env, spawn

NGINX_BIN = "nginx"

_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
worker_rlimit_nofile {nofile};
{user_line}
events {{
    worker_connections {connections};
    multi_accept on;
}}

http {{
    access_log off;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_max_body_size 10m;

    upstream relay_upstream {{
        server {upstream_host}:{upstream_port};
        keepalive {keepalive};
        keepalive_requests 1000000;
    }}

    server {{
        listen {host}:{port} backlog=4096;

        location = /healthz {{
            return 200 "ok";
        }}

        location / {{
            proxy_pass http://relay_upstream{upstream_prefix};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"""


def render_conf(
    *,
    root: Path,
    port: int,
    upstream_port: int,
    upstream_prefix: str = "/",
    upstream_host: str = LOOPBACK,
    host: str = LOOPBACK,
    connections: int = 20000,
    keepalive: int = 256,
    nofile: int | None = None,
    user: str | None = None,
) -> str:
    """An nginx.conf that relays http://host:port/X to http://upstream{prefix}X.

    `upstream_prefix` must start and end with "/": "/api/" maps /v1/chat/completions
    onto the gateway's /api/v1/chat/completions. `user` only matters when nginx
    runs as root and should drop privileges; by default the directive is omitted.
    """
    if not (upstream_prefix.startswith("/") and upstream_prefix.endswith("/")):
        raise ValueError(f"upstream_prefix must start and end with '/': {upstream_prefix!r}")
    return _CONF.format(
        root=root,
        port=port,
        host=host,
        upstream_host=upstream_host,
        upstream_port=upstream_port,
        upstream_prefix=upstream_prefix,
        connections=connections,
        nofile=nofile or connections * 2 + 64,
        keepalive=keepalive,
        user_line=f"user {user};" if user else "",
    )


def nginx_binary() -> str | None:
    return shutil.which(NGINX_BIN) or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )


async def start_nginx(
    *, port: int, upstream_port: int, upstream_prefix: str = "/", connections: int = 20000
) -> Service:
    """Render a config under WORK_DIR/nginx-<port>/ and run nginx in the foreground."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed (apt-get install -y nginx)")
    root = WORK_DIR / f"nginx-{port}"
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "nginx.conf"
    conf.write_text(
        render_conf(
            root=root,
            port=port,
            upstream_port=upstream_port,
            upstream_prefix=upstream_prefix,
            connections=connections,
            # A worker cannot raise its limit past the hard limit it inherits.
            nofile=min(connections * 2 + 64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]),
        )
    )
    # -e sets the startup error log, so nginx never touches /var/log/nginx.
    argv = [binary, "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")]
    return await spawn("nginx", argv, port=port, env=child_env(), cwd=root)
