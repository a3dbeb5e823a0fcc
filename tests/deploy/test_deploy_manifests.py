"""Static checks of deploy/: no cluster, no Docker engine, no network.

Every YAML document under deploy/kubernetes is validated against the real Kubernetes
OpenAPI schemas (strict: unknown fields are errors), using the schemas that
kubernetes-validate bundles in its wheel. The rest checks that the manifests, the
Dockerfile and the proxy's own settings agree with each other: port, probes, grace
period, user id, secrets.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "Dockerfile"
KUSTOMIZATION = K8S / "kustomization.yaml"
SECRET_EXAMPLE = K8S / "secret.example.yaml"

PROXY = "blockrun-proxy"  # container name
PORT_NAME = "proxy"
EXPECTED_UID = 10001
EXPECTED_ENTRYPOINT = ["blockrun-proxy", "serve"]

# The proxy's defaults (blockrun-proxy serve --help), used when nothing overrides them.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = "4001"
DEFAULT_GRACE_SECONDS = "30"

# Every `serve` setting the proxy reads from the environment (checked against the real
# CLI by test_real_cli_accepts_the_proxy_configuration).
PROXY_SETTINGS_ENV = {
    "BLOCKRUN_PROXY_HOST",
    "BLOCKRUN_PROXY_PORT",
    "BLOCKRUN_API_URL",
    "BLOCKRUN_PROXY_NETWORKS",
    "BLOCKRUN_PROXY_MAX_PRICE_USD",
    "BLOCKRUN_PROXY_MAX_CONCURRENT",
    "BLOCKRUN_PROXY_MAX_QUEUE",
    "BLOCKRUN_PROXY_QUEUE_TIMEOUT",
    "BLOCKRUN_PROXY_WORKERS",
    "BLOCKRUN_PROXY_REUSE_PORT",
    "BLOCKRUN_PROXY_GRACE_SECONDS",
    "BLOCKRUN_PROXY_LOG_FORMAT",
    "BLOCKRUN_PROXY_ALLOW_PUBLIC",
    "BLOCKRUN_PROXY_LOG_LEVEL",
    "BLOCKRUN_PROXY_DEFAULT_MAX_TOKENS",
    "BLOCKRUN_PROXY_PAY_TO",
    "BLOCKRUN_PROXY_STATE_DIR",
    "BLOCKRUN_PROXY_BUDGET_USD",
    "BLOCKRUN_PROXY_BUDGET_WINDOW",
    "BLOCKRUN_PROXY_REDIS_URL",
    "BLOCKRUN_PROXY_REDIS_PREFIX",
    "BLOCKRUN_PROXY_REDIS_TIMEOUT",
    "BLOCKRUN_PROXY_BUDGET_FAIL_OPEN",
    "BLOCKRUN_PROXY_LEDGER_RETENTION",
}
PROXY_SECRET_ENV = {"BLOCKRUN_WALLET_KEY", "BLOCKRUN_PROXY_TOKEN"}

# Oldest version with native sidecars (initContainers[].restartPolicy: Always) on by
# default, and the newest schema the installed kubernetes-validate ships.
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())


# --------------------------------------------------------------------------- loading


def _manifest_files(directory: Path = K8S) -> list[Path]:
    return sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])


def _all_manifest_files() -> list[Path]:
    """The base and every example beside it (kubernetes/fleet, ...): all schema-checked."""
    return sorted([*K8S.rglob("*.yaml"), *K8S.rglob("*.yml")])


def _load_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


ALL_DOCS: list[tuple[Path, int, dict[str, Any]]] = [
    (path, index, doc)
    for path in _all_manifest_files()
    for index, doc in enumerate(_load_docs(path))
]
K8S_OBJECTS = [item for item in ALL_DOCS if item[2].get("kind") != "Kustomization"]


def _kustomization() -> dict[str, Any]:
    return yaml.safe_load(KUSTOMIZATION.read_text())


def _kustomized_docs() -> list[dict[str, Any]]:
    """The objects the kustomize base applies (plain resources; no generators used)."""
    return [doc for name in _kustomization().get("resources", []) for doc in _load_docs(K8S / name)]


def _deployment() -> dict[str, Any]:
    deployments = [doc for doc in _kustomized_docs() if doc["kind"] == "Deployment"]
    assert len(deployments) == 1, "the base should hold exactly one Deployment"
    return deployments[0]


def _pod_spec() -> dict[str, Any]:
    return _deployment()["spec"]["template"]["spec"]


def _all_containers() -> list[dict[str, Any]]:
    spec = _pod_spec()
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def _proxy() -> dict[str, Any]:
    found = [c for c in _all_containers() if c["name"] == PROXY]
    assert len(found) == 1, f"expected one container named {PROXY!r}"
    return found[0]


def _apps() -> list[dict[str, Any]]:
    return [c for c in _all_containers() if c["name"] != PROXY]


def _secret_example() -> dict[str, Any]:
    (secret,) = _load_docs(SECRET_EXAMPLE)
    return secret


# --------------------------------------------------------------------------- Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, also inside a continuation
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "Dockerfile ends inside a line continuation"
    return instructions


def _dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Instructions per build stage; stage 0 is the global ARGs before the first FROM."""
    stages: list[list[tuple[str, str]]] = [[]]
    for keyword, rest in _dockerfile_instructions():
        if keyword == "FROM":
            stages.append([])
        stages[-1].append((keyword, rest))
    return stages


def _final_stage() -> list[tuple[str, str]]:
    return _dockerfile_stages()[-1]


def _only(stage: list[tuple[str, str]], keyword: str) -> str:
    """Arguments of the last `keyword` instruction of a stage (the one Docker uses)."""
    values = [rest for kw, rest in stage if kw == keyword]
    assert values, f"final stage has no {keyword}"
    return values[-1]


def _exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def _image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in _final_stage():
        if keyword == "ENV":
            for pair in shlex.split(rest):
                key, sep, value = pair.partition("=")
                assert sep, f"use ENV KEY=value form: {pair!r}"
                env[key] = value
    return env


def _image_uid() -> int:
    user = _only(_final_stage(), "USER").split(":")[0]
    assert user.isdigit(), f"USER must be numeric so runAsNonRoot can verify it: {user!r}"
    return int(user)


# --------------------------------------------------------------------------- settings


def _effective_args(container: dict[str, Any]) -> list[str]:
    """What Kubernetes passes after the entrypoint: args, else the image CMD (which
    Kubernetes drops when `command` is set without `args`)."""
    if "args" in container:
        return list(container["args"])
    if "command" in container:
        return []
    return _exec_form(_only(_final_stage(), "CMD"))


def _flag(args: list[str], flag: str) -> str | None:
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def _configmap(name: str) -> dict[str, str]:
    for doc in _kustomized_docs():
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == name:
            return dict(doc.get("data", {}))
    raise AssertionError(f"envFrom references ConfigMap {name!r} that the base does not ship")


def _env(container: dict[str, Any]) -> dict[str, Any]:
    """Container environment by Kubernetes precedence: image ENV < envFrom < env.
    A valueFrom entry maps to its valueFrom dict."""
    env: dict[str, Any] = dict(_image_env())
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            data = _configmap(source["configMapRef"]["name"])
            env.update({prefix + key: value for key, value in data.items()})
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env


def _setting(container: dict[str, Any], flag: str, env_name: str, default: str) -> str:
    """A serve option the way click resolves it: command-line flag, then env, then default."""
    from_flag = _flag(_effective_args(container), flag)
    if from_flag is not None:
        return from_flag
    value = _env(container).get(env_name, default)
    assert isinstance(value, str), f"{env_name} should be a plain value, not {value!r}"
    return value


def _proxy_port() -> int:
    return int(_setting(_proxy(), "--port", "BLOCKRUN_PROXY_PORT", DEFAULT_PORT))


def _proxy_grace_seconds() -> float:
    return float(
        _setting(_proxy(), "--grace-seconds", "BLOCKRUN_PROXY_GRACE_SECONDS", DEFAULT_GRACE_SECONDS)
    )


# =========================================================================== schemas


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    "doc",
    [pytest.param(doc, id=f"{path.relative_to(K8S)}#{index}") for path, index, doc in K8S_OBJECTS],
)
def test_object_matches_kubernetes_openapi_schema(doc: dict[str, Any], version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for {version}: {exc}")


def test_validator_really_checks_offline() -> None:
    """Guard against a validator that accepts anything (e.g. a schema it failed to load)."""
    broken = json.loads(json.dumps(_deployment()))
    broken["spec"]["template"]["spec"]["contianers"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)
    wrong_type = json.loads(json.dumps(_deployment()))
    wrong_type["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, K8S_VERSIONS[-1], strict=True)


def test_every_document_is_a_named_object() -> None:
    assert ALL_DOCS, "no manifests found under deploy/kubernetes"
    for path, index, doc in ALL_DOCS:
        assert isinstance(doc, dict), f"{path.name}#{index} is not a mapping"
        assert doc.get("apiVersion") and doc.get("kind"), f"{path.name}#{index}"
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"], f"{path.name}#{index} has no name"


# =========================================================================== kustomize


def test_kustomization_resources_exist_and_cover_the_directory() -> None:
    kustomization = _kustomization()
    assert kustomization["apiVersion"].startswith("kustomize.config.k8s.io/")
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization.get("resources", [])
    assert len(resources) == len(set(resources)), "duplicate resources"
    for name in resources:
        assert "://" not in name and "/" not in name, f"keep resources local: {name}"
        assert (K8S / name).is_file(), f"kustomization lists missing file {name}"
    expected = {
        p.name for p in _manifest_files() if p != KUSTOMIZATION and ".example." not in p.name
    }
    assert set(resources) == expected


def test_secret_example_is_not_applied() -> None:
    assert SECRET_EXAMPLE.is_file()
    assert SECRET_EXAMPLE.name not in _kustomization().get("resources", [])
    assert all(doc["kind"] != "Secret" for doc in _kustomized_docs())


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_build_renders_valid_objects() -> None:
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert {doc["kind"] for doc in rendered} == {d["kind"] for d in _kustomized_docs()}
    for doc in rendered:
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


# =========================================================================== pod shape


def test_proxy_port_is_named_and_matches_configuration() -> None:
    port = _proxy_port()
    named = [p for p in _proxy().get("ports", []) if p.get("name") == PORT_NAME]
    assert len(named) == 1, f"proxy container needs one port named {PORT_NAME!r}"
    assert named[0]["containerPort"] == port
    assert named[0].get("protocol", "TCP") == "TCP"
    assert str(port) in _only(_final_stage(), "EXPOSE").split()


def test_app_talks_to_the_proxy_over_loopback() -> None:
    port = _proxy_port()
    urls = [
        value
        for app in _apps()
        for name, value in _env(app).items()
        if name.endswith("_BASE_URL") and isinstance(value, str)
    ]
    assert urls, "the example app should be pointed at the proxy"
    for url in urls:
        parts = urlsplit(url)
        assert (parts.hostname, parts.port, parts.path) == ("127.0.0.1", port, "/v1"), url


@pytest.mark.parametrize(
    ("probe", "paths"),
    [
        ("livenessProbe", {"/healthz"}),
        ("readinessProbe", {"/readyz"}),
        ("startupProbe", {"/healthz", "/readyz"}),
    ],
)
def test_probes_use_health_routes_on_named_port(probe: str, paths: set[str]) -> None:
    proxy = _proxy()
    if probe == "startupProbe" and probe not in proxy:
        pytest.skip("no startupProbe")
    http_get = proxy[probe]["httpGet"]
    assert http_get["path"] in paths
    assert http_get["port"] == PORT_NAME
    assert http_get.get("scheme", "HTTP") == "HTTP"
    # /healthz and /readyz need no token: a probe must not carry (and leak) one.
    assert not http_get.get("httpHeaders")


def test_proxy_binds_pod_ip_only_behind_a_token() -> None:
    """httpGet probes arrive on the pod IP, so the proxy must not bind loopback; a
    non-loopback bind must be protected by a bearer token from a Secret."""
    proxy = _proxy()
    host = _setting(proxy, "--host", "BLOCKRUN_PROXY_HOST", DEFAULT_HOST)
    assert host in {"0.0.0.0", "::"}
    env = _env(proxy)
    token = env.get("BLOCKRUN_PROXY_TOKEN")
    assert isinstance(token, dict) and "secretKeyRef" in token, "token must come from a Secret"
    assert env.get("BLOCKRUN_PROXY_ALLOW_PUBLIC", "0") in {"", "0"}
    assert "--allow-public" not in _effective_args(proxy)


def test_termination_grace_outlasts_drain() -> None:
    spec = _pod_spec()
    grace = _proxy_grace_seconds()
    assert grace > 0
    assert spec["terminationGracePeriodSeconds"] > grace


def test_proxy_starts_before_and_stops_after_the_app() -> None:
    """Native sidecar (initContainers + restartPolicy: Always) if it is an init container."""
    spec = _pod_spec()
    init_names = [c["name"] for c in spec.get("initContainers", [])]
    if PROXY in init_names:
        assert _proxy().get("restartPolicy") == "Always"
    else:
        assert PROXY in [c["name"] for c in spec["containers"]]
    assert _apps(), "the example needs an application container beside the proxy"


def _security(container: dict[str, Any], key: str) -> Any:
    own = container.get("securityContext", {})
    return own[key] if key in own else _pod_spec().get("securityContext", {}).get(key)


def test_proxy_security_context() -> None:
    proxy = _proxy()
    own = proxy.get("securityContext", {})
    assert _security(proxy, "runAsNonRoot") is True
    assert _security(proxy, "runAsUser") == EXPECTED_UID == _image_uid()
    assert own.get("readOnlyRootFilesystem") is True
    assert own.get("allowPrivilegeEscalation") is False
    assert [c.upper() for c in own.get("capabilities", {}).get("drop", [])] == ["ALL"]
    assert not own.get("capabilities", {}).get("add")
    assert _security(proxy, "seccompProfile") == {"type": "RuntimeDefault"}
    assert own.get("privileged") in (None, False)


@pytest.mark.parametrize("name", [c["name"] for c in _apps()] if ALL_DOCS else [])
def test_app_containers_are_locked_down_too(name: str) -> None:
    (app,) = [c for c in _apps() if c["name"] == name]
    own = app.get("securityContext", {})
    assert _security(app, "runAsNonRoot") is True
    assert own.get("allowPrivilegeEscalation") is False
    assert [c.upper() for c in own.get("capabilities", {}).get("drop", [])] == ["ALL"]
    assert _security(app, "seccompProfile") == {"type": "RuntimeDefault"}


def test_pod_does_not_get_api_credentials_or_service_links() -> None:
    spec = _pod_spec()
    assert spec.get("automountServiceAccountToken") is False
    # Service links would inject BLOCKRUN_PROXY_PORT=tcp://... for a Service of that name.
    assert spec.get("enableServiceLinks") is False


def test_tmp_is_an_empty_dir() -> None:
    mounts = {m["mountPath"]: m["name"] for m in _proxy().get("volumeMounts", [])}
    assert "/tmp" in mounts
    volumes = {v["name"]: v for v in _pod_spec().get("volumes", [])}
    assert "emptyDir" in volumes[mounts["/tmp"]]


_UNITS = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def _quantity(value: str | int | float) -> float:
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match and match.group(2) in _UNITS, f"unexpected quantity {value!r}"
    return float(match.group(1)) * _UNITS[match.group(2)]


@pytest.mark.parametrize("name", [c["name"] for c in _all_containers()] if ALL_DOCS else [])
def test_resources_requested_and_limited(name: str) -> None:
    (container,) = [c for c in _all_containers() if c["name"] == name]
    resources = container["resources"]
    for kind in ("cpu", "memory"):
        request = _quantity(resources["requests"][kind])
        limit = _quantity(resources["limits"][kind])
        assert 0 < request <= limit, (name, kind)


def test_probe_and_scrape_paths_are_served_with_the_right_guard() -> None:
    """The kubelet sends no token, Prometheus does: probes must be public routes of the
    real app, /metrics a route behind the token."""
    app_module = pytest.importorskip("blockrun_proxy.app")
    config = pytest.importorskip("blockrun_proxy.config")
    app = app_module.create_app(config.Settings(token="t"))
    served = {route.resource.canonical for route in app.router.routes() if route.method == "GET"}
    proxy = _proxy()
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if probe in proxy:
            path = proxy[probe]["httpGet"]["path"]
            assert path in served and path in app_module.PUBLIC_PATHS, (probe, path)
    assert proxy["readinessProbe"]["httpGet"]["path"] == "/readyz"  # the one that drains
    scrape = _deployment()["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"]
    assert scrape in served and scrape not in app_module.PUBLIC_PATHS


def test_prometheus_annotations_point_at_metrics() -> None:
    annotations = _deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(_proxy_port())
    assert annotations["prometheus.io/path"] == "/metrics"


# =========================================================================== config and secrets


def test_configmap_holds_only_known_non_secret_settings() -> None:
    sources = _proxy().get("envFrom", [])
    assert sources and all("configMapRef" in s for s in sources), "settings via ConfigMap"
    for source in sources:
        data = _configmap(source["configMapRef"]["name"])
        assert data
        for key, value in data.items():
            assert source.get("prefix", "") + key in PROXY_SETTINGS_ENV, key
            assert isinstance(value, str)


def test_proxy_env_names_are_known() -> None:
    names = {item["name"] for item in _proxy().get("env", [])}
    assert names <= PROXY_SETTINGS_ENV | PROXY_SECRET_ENV, names - PROXY_SETTINGS_ENV


def _secret_refs(container: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    for item in container.get("env", []):
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            yield item["name"], ref["name"], ref["key"]
    for source in container.get("envFrom", []):
        assert "secretRef" not in source, "import secrets key by key, not with envFrom"


def test_secrets_come_from_secret_refs_matching_the_example() -> None:
    secret = _secret_example()
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    proxy_refs = {env: key for env, name, key in _secret_refs(_proxy())}
    assert set(proxy_refs) == PROXY_SECRET_ENV
    for container in _all_containers():
        for env, name, key in _secret_refs(container):
            assert name == secret["metadata"]["name"], env
            assert key in keys, f"{env} reads key {key!r} missing from {SECRET_EXAMPLE.name}"
    for container in _all_containers():
        for item in container.get("env", []):
            if item["name"] in PROXY_SECRET_ENV:
                assert "value" not in item, f"{item['name']} must not be a literal"


def test_wallet_key_reaches_only_the_proxy() -> None:
    wallet_key = {key for env, _, key in _secret_refs(_proxy()) if env == "BLOCKRUN_WALLET_KEY"}
    for app in _apps():
        env = _env(app)
        assert "BLOCKRUN_WALLET_KEY" not in env
        assert not wallet_key & {key for _, _, key in _secret_refs(app)}


def test_secret_example_holds_placeholders_only() -> None:
    text = SECRET_EXAMPLE.read_text()
    assert not re.search(r"(?i)(?<![0-9a-f])(0x)?[0-9a-f]{64}(?![0-9a-f])", text)
    secret = _secret_example()
    assert secret["kind"] == "Secret"
    assert not secret.get("data"), "use stringData placeholders, not base64 data"
    values = secret["stringData"]
    assert values["wallet-key"] == "0xYOUR_PRIVATE_KEY"
    for value in values.values():
        assert re.fullmatch(r"[0-9A-Za-z_]*(YOUR|CHANGE_ME)[0-9A-Za-z_]*", value), value


# =========================================================================== Dockerfile


def test_dockerfile_is_multi_stage_on_python_311_slim() -> None:
    stages = _dockerfile_stages()
    global_args = {
        name: default
        for kw, rest in stages[0]
        if kw == "ARG"
        for name, _, default in [rest.partition("=")]
    }
    bases = []
    for stage in stages[1:]:
        base = stage[0][1].split()[0]
        bases.append(re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), ""), base))
    assert len(bases) >= 2
    assert all(base.split("@")[0] == "python:3.11-slim" for base in bases), bases
    builder = "\n".join(rest for kw, rest in stages[-2] if kw == "RUN")
    assert "pip wheel" in builder
    final = "\n".join(rest for kw, rest in stages[-1] if kw == "RUN")
    assert "from=builder" in final and ".whl" in final


def test_dockerfile_runs_as_the_pods_numeric_non_root_user() -> None:
    uid = _image_uid()
    assert uid != 0
    assert uid == EXPECTED_UID == _security(_proxy(), "runAsUser")


def test_dockerfile_python_env() -> None:
    env = _image_env()
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"


def test_dockerfile_entrypoint_and_default_cmd() -> None:
    stage = _final_stage()
    assert _exec_form(_only(stage, "ENTRYPOINT")) == EXPECTED_ENTRYPOINT
    cmd = _exec_form(_only(stage, "CMD"))
    assert _flag(cmd, "--host") == "0.0.0.0"
    assert DEFAULT_PORT in _only(stage, "EXPOSE").split()


def test_dockerfile_healthcheck_uses_python_urllib_on_healthz() -> None:
    healthcheck = _only(_final_stage(), "HEALTHCHECK")
    match = re.search(r"\bCMD\s+(\[.*\])\s*$", healthcheck)
    assert match, "HEALTHCHECK CMD should be in exec form"
    command = _exec_form(match.group(1))
    assert command[0] in {"python", "python3"}
    assert "urllib.request" in command[-1] and "/healthz" in command[-1]


def test_dockerfile_copies_existing_sources_and_has_an_ignore_file() -> None:
    for keyword, rest in _final_stage() + _dockerfile_stages()[-2]:
        if keyword == "COPY" and "--from" not in rest:
            *sources, _dest = rest.split()
            for source in sources:
                if "*" not in source:
                    assert (ROOT / source).exists(), f"COPY source {source} missing"
    ignore_file = DEPLOY / "Dockerfile.dockerignore"
    rules = [
        line.strip()
        for line in ignore_file.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert rules[0] == "*", "allow-list the build context: start with '*'"
    assert "!blockrun_proxy/" in rules and "!pyproject.toml" in rules


def test_entrypoint_is_the_packaged_console_script() -> None:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert EXPECTED_ENTRYPOINT[0] in project.get("scripts", {})


def test_real_cli_accepts_the_proxy_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parse the container's args and env with the real `serve` command (without running
    it): every env name is one the CLI reads, every value has the right type, and the
    values the pod spec depends on are the ones the proxy will use."""
    cli = pytest.importorskip("blockrun_proxy.cli")
    config = pytest.importorskip("blockrun_proxy.config")
    options = pytest.importorskip("blockrun_proxy.options")
    serve = cli.main.commands["serve"]
    # The variables `serve` reads under its flags: the option table's (options.py).
    cli_env = {name for o in options.OPTIONS if not o.secret for name in o.env}
    assert cli_env >= PROXY_SETTINGS_ENV, PROXY_SETTINGS_ENV - cli_env
    assert {config.WALLET_ENV, config.TOKEN_ENV} == PROXY_SECRET_ENV

    proxy = _proxy()
    env = _env(proxy)
    for name in list(env) + sorted(cli_env):
        if name.startswith("BLOCKRUN_"):
            monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        if name in cli_env and isinstance(value, str):
            monkeypatch.setenv(name, value)
    unknown = {n for n in env if n.startswith("BLOCKRUN_")} - cli_env - PROXY_SECRET_ENV
    assert not unknown, f"the proxy does not read {sorted(unknown)}"

    ctx = serve.make_context("serve", _effective_args(proxy))
    settings = options.build({**options.read_environ(os.environ), **options.read_flags(ctx.params)})
    assert not config.is_loopback(settings.host)
    assert settings.port == _proxy_port()
    assert settings.grace_seconds == _proxy_grace_seconds()
    assert settings.grace_seconds < _pod_spec()["terminationGracePeriodSeconds"]
    assert settings.allow_public is False
