"""Static checks of deploy/kubernetes/fleet: several replicas, one Redis, an HPA.

Every document there is also validated against the Kubernetes schemas by
test_deploy_manifests.py (it walks all of deploy/kubernetes). These check that the pieces
fit: each replica's sidecar reaches the one Redis with its password, the HPA scales the
fleet on a metric the proxy really exports, only the fleet may reach Redis, the settings
are ones the real CLI accepts, and the image carries the spend page.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kubernetes"
FLEET = BASE / "fleet"
PROXY = "blockrun-proxy"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kustomization() -> dict[str, Any]:
    return yaml.safe_load((FLEET / "kustomization.yaml").read_text())


def _objects() -> list[dict[str, Any]]:
    return [doc for name in _kustomization()["resources"] for doc in _docs(FLEET / name)]


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        doc
        for doc in _objects()
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _fleet() -> dict[str, Any]:
    return _one("Deployment")


def _proxy(deployment: dict[str, Any]) -> dict[str, Any]:
    spec = deployment["spec"]["template"]["spec"]
    (proxy,) = [
        c for c in [*spec.get("initContainers", []), *spec["containers"]] if c["name"] == PROXY
    ]
    return proxy


def _proxy_env(proxy: dict[str, Any]) -> dict[str, Any]:
    env: dict[str, Any] = {}
    for source in proxy.get("envFrom", []):
        env.update(_one("ConfigMap", source["configMapRef"]["name"])["data"])
    for item in proxy.get("env", []):
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env


def _secret_example() -> dict[str, Any]:
    (secret,) = _docs(FLEET / "secret.example.yaml")
    return secret


def test_the_kustomization_covers_the_directory_but_not_the_secret() -> None:
    resources = _kustomization()["resources"]
    on_disk = {p.name for p in FLEET.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(resources) == {n for n in on_disk if ".example." not in n}
    assert all(doc["kind"] != "Secret" for doc in _objects())


def test_several_replicas_each_with_the_same_sidecar_as_the_base() -> None:
    fleet = _fleet()
    assert fleet["spec"]["replicas"] >= 2
    proxy = _proxy(fleet)
    assert proxy.get("restartPolicy") == "Always"  # a native sidecar in every pod
    (base,) = [d for d in _docs(BASE / "deployment.yaml") if d["kind"] == "Deployment"]
    base_proxy = _proxy(base)
    for key in ("securityContext", "startupProbe", "livenessProbe", "readinessProbe", "ports"):
        assert proxy[key] == base_proxy[key], key
    pod = fleet["spec"]["template"]["spec"]
    assert (
        pod["terminationGracePeriodSeconds"]
        == base["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    )


def test_every_sidecar_reaches_the_one_redis_with_its_password() -> None:
    env = _proxy_env(_proxy(_fleet()))
    url = urlsplit(env["BLOCKRUN_PROXY_REDIS_URL"])
    assert url.scheme == "redis" and url.password is None  # no secret in a ConfigMap
    service = _one("Service")
    assert url.hostname == service["metadata"]["name"]
    (port,) = service["spec"]["ports"]
    assert url.port == port["port"]
    redis = _one("StatefulSet")
    assert redis["spec"]["replicas"] == 1
    assert service["spec"]["selector"] == redis["spec"]["selector"]["matchLabels"]
    password = env["BLOCKRUN_PROXY_REDIS_PASSWORD"]["secretKeyRef"]
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    redis_password = {e["name"]: e for e in container["env"]}["REDIS_PASSWORD"]
    assert redis_password["valueFrom"]["secretKeyRef"] == password
    args = container["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"  # never forget spend
    assert args[args.index("--appendonly") + 1] == "yes"  # a restart keeps the budget
    assert env["BLOCKRUN_PROXY_BUDGET_USD"], "the example shares a budget"


def test_only_the_fleet_may_reach_redis() -> None:
    policy = _one("NetworkPolicy")
    redis_labels = _one("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= redis_labels.items()
    (rule,) = policy["spec"]["ingress"]
    (source,) = rule["from"]
    fleet_labels = _fleet()["spec"]["template"]["metadata"]["labels"]
    assert source["podSelector"]["matchLabels"].items() <= fleet_labels.items()
    assert [p["port"] for p in rule["ports"]] == [6379]


def test_the_hpa_scales_the_fleet_on_a_metric_the_proxy_exports() -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from blockrun_proxy.metrics import Metrics

    hpa = _one("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", _fleet()["metadata"]["name"])
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    exposition = generate_latest(Metrics().registry).decode()
    exported = {family.name for family in text_string_to_metric_families(exposition)}
    assert name in exported and name == "blockrun_proxy_upstream_inflight"
    limit = int(_proxy_env(_proxy(_fleet()))["BLOCKRUN_PROXY_MAX_CONCURRENT"])
    assert 0 < int(metric["pods"]["target"]["averageValue"]) < limit  # scale before shedding


def test_secret_refs_match_the_example_which_holds_placeholders_only() -> None:
    secret = _secret_example()
    keys = set(secret["stringData"])
    for doc in _objects():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == secret["metadata"]["name"]
                    assert ref["key"] in keys, ref
    for value in secret["stringData"].values():
        assert "YOUR" in value or "CHANGE_ME" in value
    app_env = [
        item["name"]
        for c in _fleet()["spec"]["template"]["spec"]["containers"]
        for item in c.get("env", [])
    ]
    assert "BLOCKRUN_WALLET_KEY" not in app_env and "BLOCKRUN_PROXY_REDIS_PASSWORD" not in app_env


def test_the_real_cli_accepts_the_fleet_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    from blockrun_proxy import cli, config, options

    serve = cli.main.commands["serve"]
    # The variables `serve` reads under its flags: the option table's (options.py).
    cli_env = {name for o in options.OPTIONS if not o.secret for name in o.env}
    proxy = _proxy(_fleet())
    env = _proxy_env(proxy)
    for name in [n for n in os.environ if n.startswith("BLOCKRUN_")]:
        monkeypatch.delenv(name)
    secrets = {config.WALLET_ENV, config.TOKEN_ENV, config.REDIS_PASSWORD_ENV}
    for name, value in env.items():
        assert name in cli_env | secrets, f"the proxy does not read {name}"
        if isinstance(value, str):
            monkeypatch.setenv(name, value)
    params = serve.make_context("serve", list(proxy["args"])).params
    values = {**options.read_environ(os.environ), **options.read_flags(params)}
    # A public bind needs a token of at least 16 characters.
    settings = options.build(values, {"token": "t" * 32})
    assert settings.redis_url == env["BLOCKRUN_PROXY_REDIS_URL"]
    assert settings.budget_usd is not None
    settings.check()


def test_the_image_carries_the_spend_page() -> None:
    """The Dockerfile builds a wheel of the project: the page's files must be package data
    (pyproject), inside what the build context lets through (the .dockerignore)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        tomllib = pytest.importorskip("tomli")
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = setuptools["package-data"]["blockrun_proxy.spend"]
    static = ROOT / "blockrun_proxy" / "spend" / "static"
    files = sorted(p.relative_to(static.parent).as_posix() for p in static.iterdir())
    assert {"static/index.html", "static/spend.js", "static/spend.css"} <= set(files)
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name
    rules = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().split()
    assert "!blockrun_proxy/" in rules
    assert not [r for r in rules if "static" in r or r.endswith((".js", ".css", ".html"))]
