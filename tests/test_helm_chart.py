"""deploy/helm/callbridge: linted and rendered offline by Helm's own engine (helm-python-sdk
bundles Helm's Go SDK), every rendered object validated against Kubernetes' schemas
(kubernetes-validate, strict), and what the chart renders checked to run: the config map loads
into the settings model with the environment the pod gets, the grace period outlasts the drain,
the probes hit the health endpoints, labels and selectors agree."""

from __future__ import annotations

import base64
import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

try:
    import helm_python as helm
except ImportError:  # no wheel for Linux on aarch64: the test extra leaves it out there
    if os.environ.get("CALLBRIDGE_REQUIRE_SERVICES") == "1":
        raise
    pytest.skip("helm-python-sdk is not installed on this platform", allow_module_level=True)

from callbridge.config_schema import CHART_SCHEMA_FILE, chart_values_schema
from callbridge.registry import Registry
from callbridge.runtime import plugin_manager_for, select_plugins
from callbridge.settings import Settings, load_settings

CHART = Path(__file__).parent.parent / "deploy" / "helm" / "callbridge"
RELEASE = "cb"
NAMESPACE = "voice"
FULLNAME = "cb-callbridge"
OLDEST_KUBERNETES = "1.30.0"  # Chart.yaml's kubeVersion
NEWEST_KUBERNETES = kubernetes_validate.utils.latest_version()
POD_IP = "10.1.2.3"
POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
CREDENTIALS_KEY = base64.b64encode(bytes(range(32))).decode()
API_SECRET = "s" * 40
SIP_ADDRESS = "203.0.113.7"

# What Secrets the chart does not render (a user's existingSecret) would hold.
OUTSIDE_SECRETS: dict[str, dict[str, str]] = {
    "callbridge-keys": {"CREDENTIALS_KEY": CREDENTIALS_KEY, "API_SECRET": API_SECRET},
    "managed-postgres": {"url": "postgresql+asyncpg://cb:pw@pg.db.svc:5432/callbridge"},
    "managed-redis": {"url": "rediss://:pw@redis.cache.svc:6380/0"},
}

API_KEYS = {"auth": {"api_keys": [{"apikey": "ak_prod", "secret": {"$env": "API_SECRET"}}]}}

SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "direct-statefulset": {
        "config": {
            "cluster": {"room_mode": "direct"},
            "server": {"public_api_url": "https://cb.example.com"},
        },
        "perPodUrls": {"domain": "pods.cb.example.com"},
        "replicaCount": 3,
        "ingress": {
            "enabled": True,
            "hosts": ["cb.example.com"],
            "tls": [{"secretName": "cb-tls", "hosts": ["cb.example.com", "*.pods.cb.example.com"]}],
        },
    },
    "direct-autoscaled": {
        "config": {"cluster": {"room_mode": "direct"}},
        "perPodUrls": {"domain": "pods.cb.example.com"},
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 4},
        "ingress": {"enabled": True},
    },
    "existing-secrets": {
        "config": API_KEYS,
        "secret": {"existingSecret": "callbridge-keys"},
        "postgresql": {"enabled": False},
        "externalDatabase": {"existingSecret": "managed-postgres", "existingSecretKey": "url"},
        "redis": {"enabled": False},
        "externalRedis": {"existingSecret": "managed-redis", "existingSecretKey": "url"},
    },
    "external-urls": {
        "config": API_KEYS,
        "secret": {"credentialsKey": CREDENTIALS_KEY, "env": {"API_SECRET": API_SECRET}},
        "postgresql": {"enabled": False},
        "externalDatabase": {"url": "postgresql+asyncpg://cb:pw@db.example.com:5432/cb"},
        "redis": {"enabled": False},
        "externalRedis": {"url": "rediss://:pw@redis.example.com:6380/0"},
        "networkPolicy": {"allowedFrom": [{"namespaceSelector": {"matchLabels": {"x": "y"}}}]},
    },
    "hpa-cpu": {"autoscaling": {"enabled": True}},
    "hpa-active-calls": {
        "autoscaling": {
            "enabled": True,
            "cpu": {"enabled": False},
            "activeCalls": {"enabled": True, "metricName": "callbridge_calls_active_sum"},
        }
    },
    "service-monitor": {
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        "podDisruptionBudget": {"minAvailable": 1},
    },
    "sip-relay": {
        "replicaCount": 1,
        "config": {"sip": {"enabled": True, "domain": "sip.cb.example.com"}},
        "sip": {"service": {"loadBalancerIP": SIP_ADDRESS, "annotations": {"x": "y"}}},
    },
    "sip-tls-node-port": {
        "replicaCount": 1,
        "config": {
            "sip": {
                "enabled": True,
                "port": 30060,
                "rtp_ports": "30100-30119",
                "public_address": SIP_ADDRESS,
                "tls_certificate": "/etc/sip-tls/tls.crt",
                "tls_key": "/etc/sip-tls/tls.key",
            }
        },
        "sip": {"service": {"type": "NodePort", "externalTrafficPolicy": "Cluster"}},
        "networkPolicy": {"sipAllowedFrom": [{"ipBlock": {"cidr": "198.51.100.0/24"}}]},
    },
    "sip-direct": {
        "config": {"cluster": {"room_mode": "direct"}, "sip": {"enabled": True}},
        "perPodUrls": {"domain": "pods.cb.example.com"},
        "sip": {"perPodDomain": "sip.cb.example.com"},
        "replicaCount": 3,
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    },
    "one-replica-no-services": {
        "replicaCount": 1,
        "config": {
            "storage": {"url": None},
            "refs": {"store": "memory", "config": None},
            "cluster": {"redis_url": None},
            "server": {"port": 9000},
        },
        "redis": {"enabled": False},
        "postgresql": {"enabled": False, "persistence": {"enabled": False}},
        "networkPolicy": {"enabled": False},
        "podDisruptionBudget": {"enabled": False},
        "serviceAccount": {"create": False},
        "spreadAcrossNodes": False,
    },
}


def sip_on(**sip: Any) -> dict[str, Any]:
    """Values turning SIP on with these settings (relay room mode)."""
    return {"config": {"sip": {"enabled": True, **sip}}}


def direct_sip(**sip: Any) -> dict[str, Any]:
    """Values turning SIP on with these settings in direct room mode."""
    return {
        "config": {"cluster": {"room_mode": "direct"}, "sip": {"enabled": True, **sip}},
        "perPodUrls": {"domain": "pods.cb.example.com"},
    }


SIP_RELAY: dict[str, Any] = {"replicaCount": 1, "sip": {"service": {"loadBalancerIP": SIP_ADDRESS}}}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object the chart renders for these values (NOTES.txt aside)."""
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return [
        document
        for path, text in sorted(manifests.items())
        if path.endswith(".yaml")
        for document in yaml.safe_load_all(text)
        if document
    ]


def one(objects: list[dict[str, Any]], kind: str, name: str = FULLNAME) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def workload(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = [
        o
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet") and o["metadata"]["name"] == FULLNAME
    ]
    return found


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = workload(objects)["spec"]["template"]["spec"]["containers"]
    return found


def container_ports(objects: list[dict[str, Any]]) -> set[tuple[str, int]]:
    return {(p["protocol"], p["containerPort"]) for p in container(objects)["ports"]}


def secret_data(secret: dict[str, Any]) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    return {**data, **secret.get("stringData", {})}


def pod_environment(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The environment callbridge's container starts with: envFrom Secrets, then env entries in
    order with Kubernetes' $(VAR) expansion; Secrets the chart does not render come from
    OUTSIDE_SECRETS."""
    secrets = {o["metadata"]["name"]: secret_data(o) for o in objects if o["kind"] == "Secret"}
    secrets = {**OUTSIDE_SECRETS, **secrets}
    fields = {"metadata.name": f"{FULLNAME}-0", "metadata.namespace": NAMESPACE}
    fields["status.podIP"] = POD_IP
    spec = container(objects)
    environ: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        environ.update(secrets[source["secretRef"]["name"]])
    for entry in spec["env"]:
        if "value" in entry:
            value = re.sub(r"\$\((\w+)\)", lambda m: environ[m[1]], entry["value"])
        elif "fieldRef" in entry["valueFrom"]:
            value = fields[entry["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            value = secrets[ref["name"]][ref["key"]]
        environ[entry["name"]] = value
    return environ


def load_pod_settings(objects: list[dict[str, Any]], tmp_path: Path) -> Settings:
    config = one(objects, "ConfigMap")["data"]["config.yaml"]
    path = tmp_path / "config.yaml"
    path.write_text(config, encoding="utf-8")
    return load_settings(path, environ=pod_environment(objects))


def test_the_chart_lints_clean_for_every_scenario() -> None:
    for name, values in SCENARIOS.items():
        report = helm.lint(CHART, values, strict=True, kube_version=f"v{NEWEST_KUBERNETES}")
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert not problems and not report["errors"], (name, problems, report["errors"])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_rendered_object_is_valid_kubernetes(chart: helm.Chart, scenario: str) -> None:
    objects = render(chart, SCENARIOS[scenario])
    kinds = {o["kind"] for o in objects}
    assert {"ConfigMap", "Service"} <= kinds and kinds & {"Deployment", "StatefulSet"}
    for obj in objects:
        if obj["kind"] == "ServiceMonitor":  # a CRD: no schema in kubernetes-validate
            check_service_monitor(obj, objects)
            continue
        for version in (OLDEST_KUBERNETES, NEWEST_KUBERNETES):
            kubernetes_validate.validate(obj, version, strict=True)


def check_service_monitor(monitor: dict[str, Any], objects: list[dict[str, Any]]) -> None:
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    assert selected_services(monitor["spec"]["selector"], objects) == [FULLNAME]
    assert monitor["metadata"]["labels"]["release"] == "prom"


def selected_services(selector: dict[str, Any], objects: list[dict[str, Any]]) -> list[str]:
    names = []
    for service in (o for o in objects if o["kind"] == "Service"):
        labels = service["metadata"]["labels"]
        if not selector["matchLabels"].items() <= labels.items():
            continue
        expressions = selector.get("matchExpressions", [])
        if all(e["operator"] == "DoesNotExist" and e["key"] not in labels for e in expressions):
            names.append(service["metadata"]["name"])
    return names


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_config_map_loads_with_the_pods_environment(
    chart: helm.Chart, scenario: str, tmp_path: Path
) -> None:
    objects = render(chart, SCENARIOS[scenario])
    settings = load_pod_settings(objects, tmp_path)
    selections = select_plugins(settings, Registry(plugin_manager_for(settings)))
    port = settings.server.port
    assert settings.server.host == "0.0.0.0"
    assert settings.cluster.internal_url == f"http://{POD_IP}:{port}"
    assert str(settings.data_dir) in {m["mountPath"] for m in container(objects)["volumeMounts"]}
    (http,) = [p for p in container(objects)["ports"] if p.get("name") == "http"]
    assert http == {"name": "http", "containerPort": port, "protocol": "TCP"}
    if settings.sip.enabled:
        assert settings.sip.host == "0.0.0.0"
        low, high = settings.sip.rtp_port_range
        assert container_ports(objects) >= {("UDP", settings.sip.port), ("TCP", settings.sip.port)}
        assert {("UDP", p) for p in range(low, high + 1)} <= container_ports(objects)
    else:
        assert container_ports(objects) == {("TCP", port)}
    if scenario == "one-replica-no-services":
        assert settings.storage.url is None and settings.refs.store == "memory" and port == 9000
        assert settings.cluster.redis_url is None
        assert [o["metadata"]["name"] for o in objects if o["kind"] == "Secret"] == [FULLNAME]
        return
    assert settings.refs.store == "redis"
    assert settings.cluster.redis_url is not None and settings.storage.url is not None
    assert settings.storage.url.startswith("postgresql+asyncpg://")
    assert settings.security.credentials_key is not None
    assert len(base64.b64decode(settings.security.credentials_key.get_secret_value())) == 32
    redis_url = settings.cluster.redis_url.get_secret_value()
    assert redis_url.startswith(("redis://", "rediss://"))
    assert settings.refs.config["redis"]["url"] == redis_url  # one Redis for refs and cluster
    assert {s.name for s in selections if s.kind == "ref_store"} == {"redis"}


def test_bundled_services_are_what_the_urls_name(chart: helm.Chart, tmp_path: Path) -> None:
    objects = render(chart, {})
    settings = load_pod_settings(objects, tmp_path)
    assert settings.storage.url is not None and settings.cluster.redis_url is not None
    assert f"@{FULLNAME}-postgresql:5432/callbridge" in settings.storage.url
    assert f"@{FULLNAME}-redis:6379/0" in settings.cluster.redis_url.get_secret_value()
    for component, port in (("postgresql", 5432), ("redis", 6379)):
        service = one(objects, "Service", f"{FULLNAME}-{component}")
        assert service["spec"]["ports"][0]["port"] == port
        policy = one(objects, "NetworkPolicy", f"{FULLNAME}-{component}")
        (rule,) = policy["spec"]["ingress"]
        allowed = rule["from"][0]["podSelector"]["matchLabels"]
        assert allowed["app.kubernetes.io/component"] == "server"  # only callbridge's pods
        sts = one(objects, "StatefulSet", f"{FULLNAME}-{component}")
        assert sts["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_services_off_render_no_bundled_objects(chart: helm.Chart) -> None:
    for scenario in ("existing-secrets", "external-urls", "one-replica-no-services"):
        names = {o["metadata"]["name"] for o in render(chart, SCENARIOS[scenario])}
        assert not {n for n in names if n.endswith(("-redis", "-postgresql"))}, scenario


def checksum(objects: list[dict[str, Any]]) -> str:
    annotations = workload(objects)["spec"]["template"]["metadata"]["annotations"]
    value: str = annotations["checksum/config"]
    return value


def test_checksum_config_follows_the_config(chart: helm.Chart) -> None:
    base = render(chart, {})
    assert checksum(base) == checksum(render(chart, {}))
    assert checksum(base) == checksum(render(chart, {"replicaCount": 5}))
    changed = render(chart, {"config": {"telemetry": {"log_level": "debug"}}})
    assert checksum(changed) != checksum(base)
    config_text = one(changed, "ConfigMap")["data"]["config.yaml"]
    assert yaml.safe_load(config_text)["telemetry"]["log_level"] == "debug"


@pytest.mark.parametrize("drain", [0, 30, 120.5, 900])
def test_the_grace_period_outlasts_the_drain(chart: helm.Chart, drain: float) -> None:
    objects = render(chart, {"config": {"cluster": {"drain_seconds": drain}}})
    pod = workload(objects)["spec"]["template"]["spec"]
    sleep = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert sleep > 0
    grace = pod["terminationGracePeriodSeconds"]
    # preStop runs inside the grace period; after the drain the server still ends calls,
    # flushes webhooks and spans and closes its sockets
    assert grace >= sleep + math.ceil(drain) + 25
    assert grace > drain


def test_probes_hit_the_health_endpoints(chart: helm.Chart) -> None:
    spec = container(render(chart, {}))
    assert spec["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert spec["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert spec["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    # /readyz checks the store and Redis with 2 s timeouts (callbridge.api.health)
    assert spec["readinessProbe"]["timeoutSeconds"] > 2
    assert spec["args"] == ["serve", "--config", "/etc/callbridge/config.yaml"]


def test_the_pod_runs_unprivileged(chart: helm.Chart) -> None:
    objects = render(chart, {})
    pod = workload(objects)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    context = pod["containers"][0]["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]


REQUIRED_LABELS = {
    "app.kubernetes.io/name": "callbridge",
    "app.kubernetes.io/instance": RELEASE,
    "app.kubernetes.io/managed-by": "Helm",
    "app.kubernetes.io/part-of": "callbridge",
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_labels_and_selectors_agree(chart: helm.Chart, scenario: str) -> None:
    objects = render(chart, SCENARIOS[scenario])
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert REQUIRED_LABELS.items() <= labels.items(), obj["metadata"]["name"]
        assert labels["app.kubernetes.io/component"] and labels["app.kubernetes.io/version"]
        assert labels["helm.sh/chart"] == "callbridge-0.1.0"
    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    pod_labels = [w["spec"]["template"]["metadata"]["labels"] for w in workloads]
    for owner, labels in zip(workloads, pod_labels, strict=True):
        assert owner["spec"]["selector"]["matchLabels"].items() <= labels.items()
    server = workload(objects)["spec"]["template"]["metadata"]["labels"]
    for obj in objects:
        if obj["kind"] == "Service":
            selector = {k: v for k, v in obj["spec"]["selector"].items() if k != POD_NAME_LABEL}
            assert any(selector.items() <= labels.items() for labels in pod_labels)
        elif obj["kind"] == "PodDisruptionBudget":
            assert obj["spec"]["selector"]["matchLabels"].items() <= server.items()
        elif obj["kind"] == "NetworkPolicy" and obj["metadata"]["name"] == FULLNAME:
            assert obj["spec"]["podSelector"]["matchLabels"].items() <= server.items()


def test_direct_mode_gives_every_pod_its_own_public_url(chart: helm.Chart, tmp_path: Path) -> None:
    objects = render(chart, SCENARIOS["direct-autoscaled"])
    sts = one(objects, "StatefulSet")
    assert "replicas" not in sts["spec"]  # the HPA owns the count
    assert sts["spec"]["serviceName"] == f"{FULLNAME}-pods"
    pods = [f"{FULLNAME}-{i}" for i in range(4)]  # up to autoscaling.maxReplicas
    for pod in pods:
        service = one(objects, "Service", pod)
        assert service["spec"]["selector"][POD_NAME_LABEL] == pod
    ingress = one(objects, "Ingress")
    rules = {
        r["host"]: r["http"]["paths"][0]["backend"]["service"]["name"]
        for r in ingress["spec"]["rules"]
    }
    assert rules == {"callbridge.example.com": FULLNAME} | {
        f"{pod}.pods.cb.example.com": pod for pod in pods
    }
    settings = load_pod_settings(objects, tmp_path)
    assert settings.cluster.room_mode == "direct"
    assert settings.server.public_ingest_url == f"wss://{FULLNAME}-0.pods.cb.example.com/ingest"
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": FULLNAME,
    }


def test_relay_mode_is_a_deployment_with_one_public_address(chart: helm.Chart) -> None:
    objects = render(chart, {"ingress": {"enabled": True}})
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert not [
        o for o in objects if o["kind"] == "StatefulSet" and o["metadata"]["name"] == FULLNAME
    ]
    ingress = one(objects, "Ingress")
    annotations = ingress["metadata"]["annotations"]
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{timeout}"]) >= 3600
    (rule,) = ingress["spec"]["rules"]
    assert [path["path"] for path in rule["http"]["paths"]] == ["/v2", "/ingest"], (
        "only the public paths: never /internal (the relay hop) nor /metrics"
    )
    for path in rule["http"]["paths"]:
        assert path["backend"]["service"] == {"name": FULLNAME, "port": {"name": "http"}}


def sip_services(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        o["metadata"]["name"]: o
        for o in objects
        if o["kind"] == "Service" and o["metadata"]["labels"].get("callbridge/service") == "sip"
    }


def named_ports(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in container(objects)["ports"] if "name" in p}


def port_triples(ports: list[dict[str, Any]], prefix: str) -> list[tuple[str, int, int | str]]:
    """(protocol, port, targetPort) of a Service's ports whose names start with ``prefix``."""
    return [
        (p["protocol"], p["port"], p["targetPort"]) for p in ports if p["name"].startswith(prefix)
    ]


def test_sip_off_renders_no_sip_ports_or_services(chart: helm.Chart) -> None:
    """Without config.sip.enabled (the default, in either room mode) the pod declares only its
    HTTP port, no SIP Service is rendered, the NetworkPolicy admits only that port and the pod
    gets no SIP address."""
    for scenario in ("defaults", "direct-statefulset"):
        objects = render(chart, SCENARIOS[scenario])
        assert [p["name"] for p in container(objects)["ports"]] == ["http"], scenario
        assert not sip_services(objects)
        assert not [o for o in objects if o["metadata"]["name"].endswith("-sip")]
        (rule,) = one(objects, "NetworkPolicy")["spec"]["ingress"]
        assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
        assert "CALLBRIDGE_SIP__PUBLIC_ADDRESS" not in pod_environment(objects)


@pytest.mark.parametrize("rtp_ports", ["20000-20199", "20001-20010", "40000-40001"])
def test_the_sip_service_carries_sip_and_every_rtp_port(
    chart: helm.Chart, rtp_ports: str, tmp_path: Path
) -> None:
    """SIP on in relay mode: the container declares SIP on UDP and TCP and every RTP port on
    UDP; one LoadBalancer Service `<fullname>-sip` (externalTrafficPolicy Local, the given
    loadBalancerIP) carries SIP on UDP and TCP and exactly HIGH - LOW + 1 RTP ports, each on
    the number the pod uses; the pod listens on every interface and advertises that IP."""
    objects = render(chart, SCENARIOS["sip-relay"] | sip_on(rtp_ports=rtp_ports))
    settings = load_pod_settings(objects, tmp_path)
    low, high = settings.sip.rtp_port_range
    assert f"{low}-{high}" == rtp_ports
    assert settings.sip.host == "0.0.0.0" and settings.sip.public_address == SIP_ADDRESS
    named = named_ports(objects)
    assert named["sip-udp"] == {"name": "sip-udp", "containerPort": 5060, "protocol": "UDP"}
    assert named["sip-tcp"] == {"name": "sip-tcp", "containerPort": 5060, "protocol": "TCP"}
    assert "sip-tls" not in named
    unnamed = [p for p in container(objects)["ports"] if "name" not in p]
    assert [(p["protocol"], p["containerPort"]) for p in unnamed] == [
        ("UDP", n) for n in range(low, high + 1)
    ]
    (service,) = sip_services(objects).values()
    assert service["metadata"]["name"] == f"{FULLNAME}-sip"
    assert service["metadata"]["annotations"] == {"x": "y"}
    spec = service["spec"]
    assert spec["type"] == "LoadBalancer" and spec["loadBalancerIP"] == SIP_ADDRESS
    assert spec["externalTrafficPolicy"] == "Local"
    assert spec["selector"] == workload(objects)["spec"]["selector"]["matchLabels"]
    assert port_triples(spec["ports"], "sip-") == [
        ("UDP", 5060, "sip-udp"),
        ("TCP", 5060, "sip-tcp"),
    ]
    rtp = port_triples(spec["ports"], "rtp-")
    assert len(rtp) == high - low + 1
    assert rtp == [("UDP", n, n) for n in range(low, high + 1)]
    assert not [p for p in spec["ports"] if "nodePort" in p]


def test_a_wider_rtp_range_needs_max_rtp_ports_raised(chart: helm.Chart) -> None:
    """A range wider than sip.maxRtpPorts renders once sip.maxRtpPorts allows it, a Service
    port for each of its ports."""
    values = sip_on(rtp_ports="20000-20999") | {
        "replicaCount": 1,
        "sip": {"service": {"loadBalancerIP": SIP_ADDRESS}, "maxRtpPorts": 1000},
    }
    service = one(render(chart, values), "Service", f"{FULLNAME}-sip")
    assert len(port_triples(service["spec"]["ports"], "rtp-")) == 1000


def test_sip_over_tls_and_node_ports(chart: helm.Chart, tmp_path: Path) -> None:
    """TLS configured: sip-tls (TCP, port + 1) on the container and the Service. A NodePort
    Service pins every node port to the pod's own number (SDP and Contact carry it), has no
    loadBalancerIP, and the pod advertises config.sip.public_address as given."""
    objects = render(chart, SCENARIOS["sip-tls-node-port"])
    settings = load_pod_settings(objects, tmp_path)
    assert settings.sip.tls_certificate is not None and settings.sip.port == 30060
    assert settings.sip.public_address == SIP_ADDRESS
    assert "CALLBRIDGE_SIP__PUBLIC_ADDRESS" not in pod_environment(objects)
    assert named_ports(objects)["sip-tls"] == {
        "name": "sip-tls",
        "containerPort": 30061,
        "protocol": "TCP",
    }
    spec = one(objects, "Service", f"{FULLNAME}-sip")["spec"]
    assert spec["type"] == "NodePort" and "loadBalancerIP" not in spec
    assert spec["externalTrafficPolicy"] == "Cluster"
    assert port_triples(spec["ports"], "sip-") == [
        ("UDP", 30060, "sip-udp"),
        ("TCP", 30060, "sip-tcp"),
        ("TCP", 30061, "sip-tls"),
    ]
    assert len(port_triples(spec["ports"], "rtp-")) == 20
    assert all(p["nodePort"] == p["port"] for p in spec["ports"])


@pytest.mark.parametrize("scenario", ["sip-relay", "sip-tls-node-port", "sip-direct"])
def test_the_network_policy_admits_sip_and_rtp(chart: helm.Chart, scenario: str) -> None:
    """With SIP on, the server's NetworkPolicy keeps its HTTP rule and adds one admitting exactly
    the container's SIP ports (by name, with their protocols) and its RTP ports (one UDP span),
    from everyone or from networkPolicy.sipAllowedFrom."""
    objects = render(chart, SCENARIOS[scenario])
    http_rule, sip_rule = one(objects, "NetworkPolicy")["spec"]["ingress"]
    assert http_rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    named = named_ports(objects)
    admitted: set[tuple[str, int]] = set()
    for rule in sip_rule["ports"]:
        if isinstance(rule["port"], str):
            assert named[rule["port"]]["protocol"] == rule["protocol"]
            admitted.add((rule["protocol"], named[rule["port"]]["containerPort"]))
        else:
            span = range(rule["port"], rule.get("endPort", rule["port"]) + 1)
            admitted |= {(rule["protocol"], n) for n in span}
    assert admitted == container_ports(objects) - {("TCP", named["http"]["containerPort"])}
    allowed = SCENARIOS[scenario].get("networkPolicy", {}).get("sipAllowedFrom")
    assert sip_rule.get("from") == allowed


def test_direct_mode_gives_every_pod_its_own_sip_service(chart: helm.Chart, tmp_path: Path) -> None:
    """SIP on in direct mode: no shared SIP Service; pod N gets `<fullname>-N-sip`, a
    LoadBalancer selecting only it with SIP on UDP and TCP and every RTP port of the chart's
    default range, annotated with the external-dns hostname <pod>.<sip.perPodDomain>, which is
    the address that pod advertises."""
    annotations = {"external-dns.alpha.kubernetes.io/ttl": "60"}
    values = SCENARIOS["sip-direct"] | {
        "sip": {"perPodDomain": "sip.cb.example.com", "service": {"annotations": annotations}}
    }
    objects = render(chart, values)
    pods = [f"{FULLNAME}-{i}" for i in range(3)]
    assert sorted(sip_services(objects)) == [f"{pod}-sip" for pod in pods]
    settings = load_pod_settings(objects, tmp_path)
    assert settings.sip.public_address == f"{FULLNAME}-0.sip.cb.example.com"
    low, high = settings.sip.rtp_port_range
    assert (low, high) == (20000, 20199)
    for pod in pods:
        service = one(objects, "Service", f"{pod}-sip")
        assert service["spec"]["selector"][POD_NAME_LABEL] == pod
        assert service["spec"]["type"] == "LoadBalancer"
        assert service["metadata"]["annotations"] == {
            "external-dns.alpha.kubernetes.io/hostname": f"{pod}.sip.cb.example.com",
            "external-dns.alpha.kubernetes.io/ttl": "60",
        }
        ports = service["spec"]["ports"]
        assert port_triples(ports, "sip-") == [
            ("UDP", 5060, "sip-udp"),
            ("TCP", 5060, "sip-tcp"),
        ]
        assert port_triples(ports, "rtp-") == [("UDP", n, n) for n in range(low, high + 1)]


def test_autoscaling_on_cpu_or_active_calls(chart: helm.Chart) -> None:
    cpu = one(render(chart, SCENARIOS["hpa-cpu"]), "HorizontalPodAutoscaler")
    (metric,) = cpu["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert cpu["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    calls_objects = render(chart, SCENARIOS["hpa-active-calls"])
    calls = one(calls_objects, "HorizontalPodAutoscaler")
    (metric,) = calls["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "callbridge_calls_active_sum"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "100"}
    assert calls["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert "replicas" not in one(calls_objects, "Deployment")["spec"]


def test_existing_secret_replaces_the_charts_keys(chart: helm.Chart) -> None:
    objects = render(chart, SCENARIOS["existing-secrets"])
    assert not [o for o in objects if o["kind"] == "Secret"]
    spec = container(objects)
    assert spec["envFrom"] == [{"secretRef": {"name": "callbridge-keys"}}]
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in spec["env"]
        if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
    }
    assert refs == {
        "DATABASE_URL": {"name": "managed-postgres", "key": "url"},
        "REDIS_URL": {"name": "managed-redis", "key": "url"},
    }


def test_the_charts_secret_holds_a_credentials_key(chart: helm.Chart) -> None:
    generated = secret_data(one(render(chart, {}), "Secret"))
    assert len(base64.b64decode(generated["CREDENTIALS_KEY"])) == 32
    given = secret_data(one(render(chart, SCENARIOS["external-urls"]), "Secret"))
    assert given == {
        "CREDENTIALS_KEY": CREDENTIALS_KEY,
        "API_SECRET": API_SECRET,
        "DATABASE_URL": "postgresql+asyncpg://cb:pw@db.example.com:5432/cb",
        "REDIS_URL": "rediss://:pw@redis.example.com:6380/0",
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"config": {"refs": {"store": "memory", "config": None}}}, "config.refs.store: redis"),
        ({"config": {"storage": {"url": None}}}, "config.storage.url"),
        ({"config": {"cluster": {"redis_url": None}}}, "config.cluster.redis_url"),
        ({"postgresql": {"enabled": False}}, "nothing provides it"),
        ({"redis": {"enabled": False}}, "nothing provides it"),
        ({"config": {"cluster": {"room_mode": "direct"}}}, "perPodUrls.domain"),
        ({"secret": {"existingSecret": "x", "env": {"A": "b"}}}, "secret.existingSecret"),
        ({"externalRedis": {"url": "redis://r:6379/0"}}, "choose one"),
        ({"autoscaling": {"enabled": True, "cpu": {"enabled": False}}}, "autoscaling"),
        ({"config": {"data_dir": "data"}}, "absolute path"),
        ({"replicaCount": 1, **sip_on()}, "config.sip.public_address"),
        (
            {
                "replicaCount": 1,
                **sip_on(),
                "sip": {"service": {"type": "NodePort", "loadBalancerIP": SIP_ADDRESS}},
            },
            "config.sip.public_address",
        ),
        (
            SIP_RELAY | sip_on(rtp_ports="20000-20999"),
            "config.sip.rtp_ports 20000-20999 is 1000 ports, more than sip.maxRtpPorts (200)",
        ),
        (SIP_RELAY | sip_on(rtp_ports="20001-20000"), "config.sip.rtp_ports must be LOW-HIGH"),
        (SIP_RELAY | sip_on(port={"$env": "SIP_PORT"}), "config.sip.port"),
        (direct_sip(), "sip.perPodDomain"),
        (
            direct_sip(public_address=SIP_ADDRESS) | {"sip": {"perPodDomain": "sip.example.com"}},
            "unset config.sip.public_address",
        ),
        (
            direct_sip()
            | {"sip": {"perPodDomain": "sip.example.com", "service": {"type": "NodePort"}}},
            "sip.service.type: NodePort",
        ),
        (
            direct_sip()
            | {
                "sip": {"perPodDomain": "sip.example.com", "service": {"loadBalancerIP": "1.2.3.4"}}
            },
            "sip.service.loadBalancerIP",
        ),
    ],
)
def test_values_that_cannot_work_fail_with_the_key_to_change(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        render(chart, values)


@pytest.mark.parametrize(
    "values",
    [
        {"config": {"server": {"prot": 8000}}},  # a typo in callbridge's config
        {"config": {"server": {"port": "eighty"}}},
        {"config": {"cluster": {"room_mode": "mesh"}}},
        {"replicas": 3},  # a typo in the chart's values
        {"secret": {"credentialsKey": "too short"}},
        {"autoscaling": {"activeCalls": {"metricName": ""}}},
        {"sip": {"service": {"type": "ClusterIP"}}},
        {"sip": {"maxRtpPorts": 1}},
        {"sip": {"perPodDomain": "Not A Domain"}},
        {"sip": {"servce": {}}},
        {"networkPolicy": {"sipAllowedFrom": "everyone"}},
    ],
)
def test_the_values_schema_refuses_bad_values(chart: helm.Chart, values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmValuesError):
        render(chart, values)


def test_the_values_schema_accepts_secret_references_anywhere(chart: helm.Chart) -> None:
    values = {
        "config": {
            "server": {"public_api_url": {"$env": "PUBLIC_URL"}, "port": 8000},
            "webhooks": {"config": {"rsa_sha256": {"private_key": {"$file": "/keys/hook.pem"}}}},
        }
    }
    chart.validate_schema(values)
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema({"config": {"server": {"public_api_url": {"$vault": "x"}}}})


def test_values_schema_config_part_is_generated_from_the_settings_model() -> None:
    on_disk = json.loads((CHART / CHART_SCHEMA_FILE).read_text(encoding="utf-8"))
    assert on_disk == chart_values_schema(CHART), (
        "deploy/helm/callbridge/values.schema.json is stale: "
        "run `callbridge config schema --chart deploy/helm/callbridge`"
    )
