"""Lint and render the Helm chart with a real helm binary and check the objects."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import NAMESPACE, RELEASE, template_args

yaml = pytest.importorskip("yaml")

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "helm" / "durable"
CI_DIR = CHART / "ci"
CI_VALUES = sorted(CI_DIR.glob("*.yaml"))
DEFAULTS = CI_DIR / "default-values.yaml"
KEDA = CI_DIR / "keda-monitoring-values.yaml"
EXISTING_SECRET = CI_DIR / "existing-secret-values.yaml"
CUSTOM_RESOURCES = CI_DIR / "custom-resources-values.yaml"
FULLNAME = "rel-durable"

Manifest = dict[str, Any]
Render = Callable[..., list[Manifest]]


def by_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m.get("kind") == kind]


def one(manifests: list[Manifest], kind: str) -> Manifest:
    found = by_kind(manifests, kind)
    assert len(found) == 1, f"expected exactly one {kind}, got {[m['metadata']['name'] for m in found]}"
    return found[0]


def worker(manifests: list[Manifest]) -> Manifest:
    containers = one(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["worker"]
    container: Manifest = containers[0]
    return container


def env_of(container: Manifest) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def values_of(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text()) or {}
    assert isinstance(loaded, dict)
    chart_defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    merged: dict[str, Any] = {**chart_defaults, **loaded}
    return merged


def test_ci_values_cover_required_scenarios() -> None:
    assert {p.name for p in CI_VALUES} >= {
        DEFAULTS.name,
        KEDA.name,
        EXISTING_SECRET.name,
        CUSTOM_RESOURCES.name,
    }


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_lint_strict(helm: Callable[..., Any], values: Path) -> None:
    result = helm("lint", "--strict", str(CHART), "-f", str(values))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_rendered_worker_invariants(render: Render, values: Path) -> None:
    manifests = render(values)
    settings = values_of(values)
    deployment = one(manifests, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = worker(manifests)
    port = int(settings["opsPort"])

    # Command line: `durable worker <app> --ops-port <port>` (the image's ENTRYPOINT is `durable`).
    assert container["args"] == ["worker", settings["app"], "--ops-port", str(port)]
    assert {"name": "ops", "containerPort": port, "protocol": "TCP"} in container["ports"]

    # Probes hit the ops server: liveness /healthz, readiness /readyz.
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "ops"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ops"}
    if "startupProbe" in container:
        assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "ops"}

    # Graceful shutdown: the kubelet must wait longer than the drain.
    env = env_of(container)
    drain = int(settings["drainTimeout"])
    assert env["DURABLE_DRAIN_TIMEOUT"] == str(drain)
    assert pod["terminationGracePeriodSeconds"] > drain

    # Environment from values.
    assert env["DURABLE_HUB"] == str(settings["hub"])
    assert env["DURABLE_PARTITIONS"] == str(settings["partitions"])
    assert env["DURABLE_CONCURRENCY"] == str(settings["concurrency"])
    assert env["DURABLE_OPS_PORT"] == str(port)
    assert set(env["DURABLE_REDIS_URL"]) == {"secretKeyRef"}

    # Never root.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"]

    # Ops Service and PDB select the worker pods.
    selector = deployment["spec"]["selector"]["matchLabels"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    service = one(manifests, "Service")
    assert service["spec"]["selector"] == selector
    assert service["spec"]["ports"] == [{"name": "ops", "port": port, "targetPort": "ops", "protocol": "TCP"}]
    pdb = one(manifests, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert ("maxUnavailable" in pdb["spec"]) != ("minAvailable" in pdb["spec"])

    # The secret reference resolves to a chart-created Secret or to the declared existing one.
    ref = env["DURABLE_REDIS_URL"]["secretKeyRef"]
    if settings["redis"].get("existingSecret"):
        assert ref == {
            "name": settings["redis"]["existingSecret"],
            "key": settings["redis"]["existingSecretKey"],
        }
    else:
        secret = one(manifests, "Secret")
        assert ref == {"name": secret["metadata"]["name"], "key": "redis-url"}
        assert secret["stringData"]["redis-url"] == settings["redis"]["url"]


def test_defaults(render: Render) -> None:
    manifests = render(DEFAULTS)
    deployment = one(manifests, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert pod["terminationGracePeriodSeconds"] == 30 + 15
    assert pod["securityContext"]["runAsUser"] == 10001
    assert worker(manifests)["securityContext"]["readOnlyRootFilesystem"] is True
    assert worker(manifests)["image"] == "durable:0.1.0"
    assert one(manifests, "PodDisruptionBudget")["spec"] == {
        "selector": deployment["spec"]["selector"],
        "maxUnavailable": 1,
    }
    assert "checksum/secret" in deployment["spec"]["template"]["metadata"]["annotations"]
    # the ops API is protected by default, with a token the chart generates
    secret = one(manifests, "Secret")
    assert env_of(worker(manifests))["DURABLE_OPS_TOKEN"] == {
        "secretKeyRef": {"name": secret["metadata"]["name"], "key": "ops-token"}
    }
    kinds = {m["kind"] for m in manifests}
    assert kinds == {"Deployment", "Service", "Secret", "ServiceAccount", "PodDisruptionBudget"}


def test_keda_servicemonitor_prometheusrule(render: Render) -> None:
    manifests = render(KEDA)
    deployment = one(manifests, "Deployment")
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"

    scaled = one(manifests, "ScaledObject")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    assert spec["minReplicaCount"] == 1
    # keda.maxReplicaCount is 40 in the values but a hub has only 16 partitions.
    assert spec["maxReplicaCount"] == 16
    triggers = {t["type"]: t for t in spec["triggers"]}
    assert set(triggers) == {"redis-streams", "prometheus"}

    redis = triggers["redis-streams"]["metadata"]
    assert redis["stream"] == "durable:{orders}:tasks"
    assert redis["consumerGroup"] == "activity-workers"
    assert redis["lagCount"] == "25"
    assert redis["activationLagCount"] == "1"
    assert redis["address"] == "redis-master.data.svc:6380"
    assert redis["databaseIndex"] == "2"
    assert redis["enableTLS"] == "true"
    auth_name = triggers["redis-streams"]["authenticationRef"]["name"]
    auth = one(manifests, "TriggerAuthentication")
    assert auth["metadata"]["name"] == auth_name
    secret = one(manifests, "Secret")
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": secret["metadata"]["name"], "key": "redis-password"}
    ]
    assert secret["stringData"]["redis-password"] == "s3cret"

    prom = triggers["prometheus"]["metadata"]
    assert "durable_partition_backlog_messages" in prom["query"]
    assert f'job="{FULLNAME}"' in prom["query"]
    assert prom["threshold"] == "200"
    assert prom["serverAddress"].startswith("http")

    monitor = one(manifests, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == "ops"
    assert endpoint["path"] == "/metrics"
    assert endpoint["authorization"]["credentials"] == {
        "name": secret["metadata"]["name"],
        "key": "ops-token",
    }
    assert monitor["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]

    env = env_of(worker(manifests))
    assert env["DURABLE_OPS_TOKEN"] == {
        "secretKeyRef": {"name": secret["metadata"]["name"], "key": "ops-token"}
    }
    assert env["DURABLE_HUB"] == "orders"
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 60 + 15

    rule = one(manifests, "PrometheusRule")
    alerts = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert "DurableNoPartitionsOwned" in alerts
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            assert f'job="{FULLNAME}", namespace="durable-test"' in r["expr"], r["alert"]


def test_existing_secret(render: Render) -> None:
    manifests = render(EXISTING_SECRET)
    assert by_kind(manifests, "Secret") == [], "no Secret may be created when both secrets exist"
    env = env_of(worker(manifests))
    assert env["DURABLE_REDIS_URL"] == {"secretKeyRef": {"name": "durable-redis", "key": "url"}}
    assert env["DURABLE_OPS_TOKEN"] == {"secretKeyRef": {"name": "durable-ops", "key": "token"}}
    annotations = one(manifests, "Deployment")["spec"]["template"]["metadata"].get("annotations") or {}
    assert "checksum/secret" not in annotations
    scaled = one(manifests, "ScaledObject")
    assert [t["type"] for t in scaled["spec"]["triggers"]] == ["redis-streams"]
    metadata = scaled["spec"]["triggers"][0]["metadata"]
    assert metadata["address"] == "redis.data.svc:6379"
    assert metadata["stream"] == "durable:{default}:tasks"
    assert metadata["databaseIndex"] == "0"
    assert metadata["enableTLS"] == "false"
    assert scaled["spec"]["maxReplicaCount"] == 32, "defaults to the partition count"
    auth = one(manifests, "TriggerAuthentication")
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "durable-redis", "key": "password"}
    ]


def test_sidecar_switch(render: Render) -> None:
    manifests = render(DEFAULTS, sets=["sidecar.enabled=true", "sidecar.port=4002"])
    container = worker(manifests)
    assert container["args"] == ["sidecar", "--host", "0.0.0.0", "--port", "4002", "--ops-port", "9464"]
    assert {"name": "grpc", "containerPort": 4002, "protocol": "TCP"} in container["ports"]
    ports = one(manifests, "Service")["spec"]["ports"]
    assert {"name": "grpc", "port": 4002, "targetPort": "grpc", "protocol": "TCP"} in ports


def test_custom_resources(render: Render) -> None:
    manifests = render(CUSTOM_RESOURCES)
    deployment = one(manifests, "Deployment")
    container = worker(manifests)
    assert container["resources"] == {
        "requests": {"cpu": "1", "memory": "1Gi"},
        "limits": {"cpu": "2", "memory": "2Gi"},
    }
    assert container["image"] == "registry.example.com/team/durable-app:1.2.3"
    assert container["imagePullPolicy"] == "Always"
    assert container["args"][:2] == ["worker", "entities.counter:worker"]
    assert deployment["spec"]["replicas"] == 4
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 150
    assert env_of(container)["LOG_LEVEL"] == "debug"
    assert env_of(container)["DURABLE_CONCURRENCY"] == "64"
    pdb = one(manifests, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2
    assert "maxUnavailable" not in pdb["spec"]
    assert deployment["spec"]["template"]["spec"]["topologySpreadConstraints"][0]["maxSkew"] == 1


@pytest.mark.parametrize(
    ("sets", "drain", "grace"),
    [
        (["terminationGracePeriodSeconds=30"], 30, 30),
        (["terminationGracePeriodSeconds=10"], 30, 10),
        (["drainTimeout=120", "terminationGracePeriodSeconds=90"], 120, 90),
    ],
)
def test_too_short_grace_period_fails(
    render_error: Callable[..., str], sets: list[str], drain: int, grace: int
) -> None:
    error = render_error(DEFAULTS, sets=sets)
    assert f"terminationGracePeriodSeconds ({grace}) must be greater than drainTimeout ({drain})" in error


def test_grace_period_follows_drain_timeout(render: Render) -> None:
    manifests = render(DEFAULTS, sets=["drainTimeout=300", "terminationGraceMarginSeconds=20"])
    assert one(manifests, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 320
    manifests = render(DEFAULTS, sets=["drainTimeout=300", "terminationGracePeriodSeconds=301"])
    assert one(manifests, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 301


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["redis.url="], "set redis.url, or redis.existingSecret"),
        (["keda.enabled=true", "keda.minReplicaCount=0"], "minReplicaCount"),
        (["securityContext.runAsNonRoot=false"], "runAsNonRoot"),
        (["podSecurityContext.runAsNonRoot=false"], "runAsNonRoot"),
        (["hub=bad{hub}"], "hub"),
        (["partitions=0"], "partitions"),
        (
            ["keda.enabled=true", "redis.existingSecret=x", "keda.prometheus.enabled=false"],
            "keda.redisStreams.address",
        ),
        (
            ["keda.enabled=true", "keda.redisStreams.enabled=false", "keda.prometheus.enabled=false"],
            "at least one trigger",
        ),
    ],
)
def test_invalid_values_fail(render_error: Callable[..., str], sets: list[str], message: str) -> None:
    assert message in render_error(DEFAULTS, sets=sets)


def test_keda_caps_and_defaults(render: Render) -> None:
    manifests = render(DEFAULTS, sets=["keda.enabled=true", "partitions=8"])
    spec = one(manifests, "ScaledObject")["spec"]
    assert spec["minReplicaCount"] == 1
    assert spec["maxReplicaCount"] == 8
    manifests = render(DEFAULTS, sets=["keda.enabled=true", "partitions=8", "keda.maxReplicaCount=3"])
    assert one(manifests, "ScaledObject")["spec"]["maxReplicaCount"] == 3
    # No password in the default URL, so no TriggerAuthentication.
    assert by_kind(manifests, "TriggerAuthentication") == []
    redis = one(manifests, "ScaledObject")["spec"]["triggers"][0]
    assert "authenticationRef" not in redis
    assert redis["metadata"]["address"] == "redis:6379"


def test_optional_objects_off_by_default(render: Render) -> None:
    kinds = {m["kind"] for m in render(DEFAULTS)}
    assert not kinds & {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule"}


# -- the ops token ---------------------------------------------------------------------------------
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9]{40}")


def rendered_secret_text(helm: Callable[..., Any], *args: str) -> tuple[str, str]:
    """(the rendered text of templates/secret.yaml, the Deployment's checksum/secret) of a render."""
    result = helm(*args)
    assert result.returncode == 0, result.stderr
    docs = result.stdout.split("\n---\n")
    body = next(d for d in docs if "# Source: durable/templates/secret.yaml" in d).split("\n", 1)[1]
    checksum = re.search(r"checksum/secret: ([0-9a-f]{64})", result.stdout)
    assert checksum is not None
    return body, checksum.group(1)


def test_generated_ops_token(render: Render, helm: Callable[..., Any]) -> None:
    manifests = render(DEFAULTS)
    token = one(manifests, "Secret")["stringData"]["ops-token"]
    assert TOKEN_PATTERN.fullmatch(token), token
    # random per install (no cluster to read a previous one from here)
    assert one(render(DEFAULTS), "Secret")["stringData"]["ops-token"] != token
    # generated once per render: the pods' checksum is that of the Secret they get
    body, checksum = rendered_secret_text(helm, *template_args([DEFAULTS], []))
    body = body.strip("\n")  # helm trims the template's surrounding newlines differently
    variants = {f"{head}{body}{tail}" for head in ("", "\n") for tail in ("", "\n")}
    assert checksum in {hashlib.sha256(text.encode()).hexdigest() for text in variants}


def test_explicit_ops_token_and_opting_out(render: Render) -> None:
    manifests = render(DEFAULTS, sets=["opsToken.value=my-own token"])
    assert one(manifests, "Secret")["stringData"]["ops-token"] == "my-own token"

    manifests = render(DEFAULTS, sets=["opsToken.enabled=false", "serviceMonitor.enabled=true"])
    assert "DURABLE_OPS_TOKEN" not in env_of(worker(manifests))
    assert "ops-token" not in one(manifests, "Secret")["stringData"]
    assert "authorization" not in one(manifests, "ServiceMonitor")["spec"]["endpoints"][0]

    # an existing Secret (or a value) wins over enabled=false
    manifests = render(DEFAULTS, sets=["opsToken.enabled=false", "opsToken.existingSecret=mine"])
    assert env_of(worker(manifests))["DURABLE_OPS_TOKEN"] == {
        "secretKeyRef": {"name": "mine", "key": "ops-token"}
    }


def test_prometheus_scrapes_metrics_with_the_generated_token(render: Render) -> None:
    manifests = render(DEFAULTS, sets=["serviceMonitor.enabled=true"])
    secret = one(manifests, "Secret")
    endpoint = one(manifests, "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["path"] == "/metrics"
    assert endpoint["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": secret["metadata"]["name"], "key": "ops-token"},
    }
    # the probes need no token
    container = worker(manifests)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "httpHeaders" not in container["livenessProbe"]["httpGet"]


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["serviceMonitor.enabled=true", "serviceMonitor.useOpsToken=false"], "Prometheus would get 401"),
        (["opsToken.value=   "], "opsToken.value must be printable ASCII and not only spaces"),
        (["opsToken.value=p\u00e4ssw\u00f6rd"], "opsToken.value must be printable ASCII"),
    ],
)
def test_invalid_ops_token_settings_fail(
    render_error: Callable[..., str], sets: list[str], message: str
) -> None:
    assert message in render_error(DEFAULTS, sets=sets)


class _FakeKubeAPI(BaseHTTPRequestHandler):
    """Just enough of a Kubernetes API server for ``helm template --dry-run=server``: discovery,
    and the objects of a previous install of release ``rel`` (only its Secret has content)."""

    secret_token = "token-of-the-previous-install"
    resources = {
        "/api/v1": (
            "v1",
            [("secrets", "Secret"), ("services", "Service"), ("serviceaccounts", "ServiceAccount")],
        ),
        "/apis/apps/v1": ("apps/v1", [("deployments", "Deployment")]),
        "/apis/policy/v1": ("policy/v1", [("poddisruptionbudgets", "PodDisruptionBudget")]),
    }

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        body: dict[str, Any]
        if path == "/version":
            body = {"major": "1", "minor": "30", "gitVersion": "v1.30.0"}
        elif path == "/api":
            body = {"kind": "APIVersions", "versions": ["v1"]}
        elif path == "/apis":
            groups = [
                {
                    "name": group,
                    "versions": [{"groupVersion": f"{group}/v1", "version": "v1"}],
                    "preferredVersion": {"groupVersion": f"{group}/v1", "version": "v1"},
                }
                for group in ("apps", "policy")
            ]
            body = {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        elif path in self.resources:
            group_version, kinds = self.resources[path]
            body = {
                "kind": "APIResourceList",
                "groupVersion": group_version,
                "resources": [
                    {
                        "name": name,
                        "singularName": kind.lower(),
                        "namespaced": True,
                        "kind": kind,
                        "verbs": ["get"],
                    }
                    for name, kind in kinds
                ],
            }
        elif path == f"/api/v1/namespaces/{NAMESPACE}/secrets/{FULLNAME}":
            body = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": FULLNAME,
                    "namespace": NAMESPACE,
                    "labels": {"app.kubernetes.io/managed-by": "Helm"},
                    "annotations": {
                        "meta.helm.sh/release-name": RELEASE,
                        "meta.helm.sh/release-namespace": NAMESPACE,
                    },
                },
                "data": {
                    "redis-url": base64.b64encode(b"redis://redis:6379/0").decode(),
                    "ops-token": base64.b64encode(self.secret_token.encode()).decode(),
                },
            }
        else:
            self._reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404})
            return
        self._reply(200, body)

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def kube_api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeKubeAPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_generated_ops_token_is_kept_across_upgrades(helm_bin: Path, kube_api: str, tmp_path: Path) -> None:
    """An upgrade reads the token back from the release's Secret (``lookup``) instead of
    generating a new one, which would lock out every client and scraper holding the old one."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    args = [
        *template_args([DEFAULTS], []),
        "--dry-run=server",
        "--disable-openapi-validation",
        "--kube-apiserver",
        kube_api,
        "--kubeconfig",
        str(kubeconfig),
    ]
    result = subprocess.run(
        [str(helm_bin), *args], capture_output=True, text=True, timeout=120, check=False, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr
    manifests = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert one(manifests, "Secret")["stringData"]["ops-token"] == _FakeKubeAPI.secret_token
    # an explicit value still wins
    result = subprocess.run(
        [str(helm_bin), *args, "--set", "opsToken.value=rotated"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    manifests = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert one(manifests, "Secret")["stringData"]["ops-token"] == "rotated"
