"""The Kubernetes manifests in ``deploy/k8s`` hold offline: every core object against Kubernetes'
own schemas (``kubernetes-validate``, strict), the Prometheus Operator's objects against the
Services and the rules they come from (``promtool``), and every probe, port and setting against
what the gateway and the loop controller really serve — by their route tables and settings, and
by asking real ``bentoml serve`` and ``gateway-controller`` processes."""

from __future__ import annotations

import copy
import importlib.util
import inspect
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import httpx
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

from gateway import controller as controller_module
from gateway.batching import Batcher
from gateway.http import create_app
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from tests.conftest import FAST_LOANS, train_ok
from tests.helpers import REPO, free_port, run_controller, serve_gateway

K8S = REPO / "deploy" / "k8s"
RULES = REPO / "deploy" / "rules" / "gateway.yml"
RULE_TESTS = REPO / "deploy" / "rules" / "gateway_test.yml"
JOB_TEMPLATE = "retrain-job.yaml"  # created by hand, never applied (README.md)
KUBERNETES = "1.33"
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}
BENTOML_PORT = 3000  # `bentoml serve`'s default --port, which the image's entrypoint keeps
BENTOML_ROUTES = {"/livez", "/readyz", "/metrics"}  # BentoML's own, beside the mounted app
# What a replica may wait for on SIGTERM besides its batchers' drains (gateway.yaml): the gRPC
# front's exit, the data plane's close, the prediction log's writer (10 s each).
FIXED_STOP_WAITS_S = 10 + 10 + 10
SERVICE_MONITOR_FIELDS = {"jobLabel", "selector", "endpoints", "namespaceSelector"}
ENDPOINT_FIELDS = {"port", "path", "interval", "scrapeTimeout", "scheme", "relabelings"}


# -- reading the manifests ---------------------------------------------------------------------
def documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def kustomization() -> dict[str, Any]:
    found: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return found


def applied() -> list[dict[str, Any]]:
    """Every object ``kubectl apply -k deploy/k8s`` applies."""
    return [doc for name in kustomization()["resources"] for doc in documents(name)]


def every_object() -> list[dict[str, Any]]:
    return applied() + documents(JOB_TEMPLATE)


def named(kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in applied() if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def workloads() -> list[dict[str, Any]]:
    return [o for o in every_object() if o["kind"] in {"Deployment", "Job"}]


def only_container(workload: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod_spec(workload)["containers"]
    (container,) = containers
    return container


def environment(container: dict[str, Any]) -> dict[str, str]:
    """The variables a container gets from its ConfigMaps and literal values (not Secrets)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(named("ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def settings_of(container: dict[str, Any]) -> GatewaySettings:
    """The container's ``GatewaySettings``; a ``GATEWAY_`` variable that is no setting fails."""
    gateway = {k: v for k, v in environment(container).items() if k.startswith("GATEWAY_")}
    given = {k.removeprefix("GATEWAY_").lower(): v for k, v in gateway.items()}
    return GatewaySettings.model_validate(given)  # these values only, not this process's env


def runs_controller(container: dict[str, Any]) -> bool:
    return bool(container.get("args", [])[:3] == ["python", "-m", "gateway.controller"])


def container_port(container: dict[str, Any], port: int | str) -> int:
    """The number behind a probe's or a Service's ``port`` (a name or a number)."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


def http_probes(container: dict[str, Any]) -> list[tuple[str, int, str]]:
    """``(probe, port number, path)`` of every ``httpGet`` probe of ``container``."""
    return [
        (kind, container_port(container, probe["httpGet"]["port"]), probe["httpGet"]["path"])
        for kind in ("startupProbe", "readinessProbe", "livenessProbe")
        if "httpGet" in (probe := container.get(kind, {}))
    ]


def selected(selector: dict[str, str], kind: str) -> list[dict[str, Any]]:
    """The objects of ``kind`` whose (pod) labels carry every label of ``selector``."""

    def labels(obj: dict[str, Any]) -> dict[str, str]:
        meta = obj["spec"]["template"]["metadata"] if kind == "Deployment" else obj["metadata"]
        found: dict[str, str] = meta.get("labels", {})
        return found

    return [o for o in applied() if o["kind"] == kind and selector.items() <= labels(o).items()]


def promtool(*args: str) -> str:
    """Run Debian's promtool (``make tools``); its standard output. Missing is a failure."""
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("`promtool` is not on PATH: run `make tools` (Debian's prometheus)")
    result = subprocess.run([found, *args], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("k8s_generate", K8S / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- what the processes serve, in-process --------------------------------------------------------
def get_paths(app: Any) -> set[str]:
    return {route.path for route in app.routes if "GET" in (route.methods or ())}


def no_core() -> Any:
    raise AssertionError("the route table is read without a model")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[int, set[str]]]:
    """``{container name: {port: GET paths}}``: each container's process and the routes its
    ports answer, from the apps the processes serve and the settings the manifests give them."""
    gateway_paths = get_paths(create_app(no_core))
    state = tmp_path_factory.mktemp("controller-state")
    loop = controller_module.Controller(GatewaySettings(state_dir=state), GatewayMetrics())
    controller_paths = get_paths(controller_module.create_app(loop))
    found: dict[str, dict[int, set[str]]] = {}
    for workload in workloads():
        if workload["kind"] != "Deployment":
            continue
        container = only_container(workload)
        settings = settings_of(container)
        if runs_controller(container):
            found[container["name"]] = {settings.controller_port: controller_paths}
        else:  # the image's entrypoint: bentoml serve
            found[container["name"]] = {
                BENTOML_PORT: BENTOML_ROUTES | gateway_paths,
                settings.data_port: gateway_paths,
            }
    return found


# -- the manifests ---------------------------------------------------------------------------------
def test_kustomize_applies_every_manifest_but_the_job_template() -> None:
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", JOB_TEMPLATE}
    assert sorted(kustomization()["resources"]) == sorted(manifests)
    assert "namespace" not in kustomization()  # the user's choice: `kubectl apply -k -n NS`
    assert all("namespace" not in obj["metadata"] for obj in every_object())


def test_every_core_object_is_valid_for_kubernetes_1_33_strictly() -> None:
    core = [obj for obj in every_object() if obj["kind"] not in OPERATOR_KINDS]
    kinds = {obj["kind"] for obj in core}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "Job"} <= kinds
    for obj in core:
        assert kubernetes_validate.validate(obj, KUBERNETES, strict=True) == KUBERNETES


def test_the_validator_refuses_a_misspelt_field() -> None:
    deployment = copy.deepcopy(named("Deployment", "lineage-gateway"))
    probe = only_container(deployment)["readinessProbe"]
    probe["httpGet"]["paht"] = probe["httpGet"].pop("path")
    with pytest.raises(kubernetes_validate.ValidationError, match="paht"):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


def test_no_secret_is_in_the_repository_and_every_one_used_is_created_in_the_readme() -> None:
    assert [o for o in every_object() if o["kind"] == "Secret"] == []
    used = {
        (ref["name"], ref["key"])
        for workload in workloads()
        for env in only_container(workload).get("env", [])
        if (ref := env.get("valueFrom", {}).get("secretKeyRef"))
    }
    readme = (K8S / "README.md").read_text().replace("\\\n", " ")
    created = {
        (name, key)
        for line in readme.splitlines()
        if (command := re.search(r"kubectl create secret generic ([\w-]+)", line))
        for name in [command.group(1)]
        for key in re.findall(r"--from-literal=([\w-]+)=", line)
    }
    assert used == created


def test_every_gateway_variable_is_a_setting_that_parses() -> None:
    for workload in workloads():
        container = only_container(workload)
        settings_of(container)  # raises on an unknown or ill-typed GATEWAY_ variable
        from_secrets = [e["name"] for e in container.get("env", []) if "valueFrom" in e]
        for name in from_secrets:
            if name.startswith("GATEWAY_"):
                assert name.removeprefix("GATEWAY_").lower() in GatewaySettings.model_fields


def test_the_state_dir_is_a_volume_of_every_process_that_keeps_state() -> None:
    for workload in workloads():
        container = only_container(workload)
        if workload["kind"] == "Job":
            continue
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert str(settings_of(container).state_dir) in mounts, container["name"]


# -- probes and ports ------------------------------------------------------------------------------
def test_every_http_probe_asks_a_route_the_process_serves_on_that_port(
    served: dict[str, dict[int, set[str]]],
) -> None:
    probed = 0
    for workload in workloads():
        if workload["kind"] != "Deployment":
            continue
        container = only_container(workload)
        ports = served[container["name"]]
        for probe, port, path in http_probes(container):
            assert port in ports, f"{container['name']} {probe}: nothing listens on {port}"
            assert path in ports[port], f"{container['name']} {probe}: {port} has no {path}"
            probed += 1
        assert "readinessProbe" in container
        assert "livenessProbe" in container
    assert probed >= 5


def test_the_grpc_probe_asks_the_port_the_workers_bind() -> None:
    container = only_container(named("Deployment", "lineage-gateway"))
    probes = [p for p in container.values() if isinstance(p, dict) and "grpc" in p]
    (probe,) = probes
    default = GatewaySettings.model_fields["grpc_port"].default
    assert probe["grpc"]["port"] == default == settings_of(container).grpc_port
    assert probe["grpc"].get("service", "") == ""  # the whole server, as grpc_server.Health says
    assert container_port(container, "grpc") == default


def test_container_ports_are_the_ports_the_processes_bind(
    served: dict[str, dict[int, set[str]]],
) -> None:
    for workload in workloads():
        if workload["kind"] != "Deployment":
            continue
        container = only_container(workload)
        ports = {p["containerPort"] for p in container["ports"]}
        http_ports = set(served[container["name"]])
        grpc = {settings_of(container).grpc_port} if not runs_controller(container) else set()
        assert ports == http_ports | grpc, container["name"]


def test_each_service_exposes_every_container_port_by_name_at_the_same_number() -> None:
    services = [o for o in applied() if o["kind"] == "Service"]
    assert len(services) == 2
    for service in services:
        (workload,) = selected(service["spec"]["selector"], "Deployment")
        container = only_container(workload)
        exposed = {
            (p["name"], p["port"], container_port(container, p["targetPort"]))
            for p in service["spec"]["ports"]
        }
        declared = {(p["name"], p["containerPort"], p["containerPort"]) for p in container["ports"]}
        assert exposed == declared, service["metadata"]["name"]


def test_the_autoscaler_scales_the_gateway_by_the_cpu_it_requests() -> None:
    hpa = named("HorizontalPodAutoscaler", "lineage-gateway")
    target = hpa["spec"]["scaleTargetRef"]
    deployment = named(target["kind"], target["name"])
    assert "replicas" not in deployment["spec"]  # the autoscaler owns the count
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert "cpu" in only_container(deployment)["resources"]["requests"]
    assert hpa["spec"]["minReplicas"] >= 2


def test_one_controller_runs_and_is_replaced_not_rolled() -> None:
    deployment = named("Deployment", "lineage-gateway-controller")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert runs_controller(only_container(deployment))


def test_the_grace_period_covers_the_prestop_sleep_and_the_drain() -> None:
    spec = pod_spec(named("Deployment", "lineage-gateway"))
    sleep = only_container(named("Deployment", "lineage-gateway"))["lifecycle"]["preStop"]
    drain = inspect.signature(Batcher.drain).parameters["timeout"].default
    store = GatewaySettings.model_fields["store_timeout_s"].default
    # two batchers may drain: the worker's and, with a shared device, the device owner's
    needed = sleep["sleep"]["seconds"] + 2 * drain + FIXED_STOP_WAITS_S + store
    assert spec["terminationGracePeriodSeconds"] >= needed


def test_the_retrain_job_runs_the_command_the_controller_runs() -> None:
    (job,) = documents(JOB_TEMPLATE)
    assert job["metadata"]["generateName"]  # `kubectl create` makes a new one each time
    container = only_container(job)
    args = container["args"]
    assert args[:5] == ["python", "-m", "trainers", "retrain", "--from-run"]
    variables = {e["name"] for e in container["env"]}
    for argument in args:
        for variable in re.findall(r"\$\((\w+)\)", argument):
            assert variable in variables, f"$({variable}) is not set in the Job"
    assert pod_spec(job)["restartPolicy"] == "Never"
    controller = only_container(named("Deployment", "lineage-gateway-controller"))
    assert container["workingDir"] == controller["workingDir"]


# -- the Prometheus Operator's objects ----------------------------------------------------------
def test_the_prometheus_rule_is_generated_from_the_alert_rules() -> None:
    assert (K8S / "prometheusrule.yaml").read_text() == generator().render(RULES)
    (rule,) = [o for o in applied() if o["kind"] == "PrometheusRule"]
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_a_stale_prometheus_rule_is_told_apart(tmp_path: Path) -> None:
    changed = tmp_path / "gateway.yml"
    changed.write_text(RULES.read_text().replace("for: 2m", "for: 3m", 1))
    assert generator().render(changed) != (K8S / "prometheusrule.yaml").read_text()


def test_the_prometheus_rule_passes_promtool_and_the_rules_unit_tests(tmp_path: Path) -> None:
    (rule,) = [o for o in applied() if o["kind"] == "PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    extracted = tmp_path / "gateway.yml"  # the name the unit tests load
    extracted.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    count = sum(len(group["rules"]) for group in rule["spec"]["groups"])
    assert f"SUCCESS: {count} rules found" in promtool("check", "rules", str(extracted))
    assert "SUCCESS" in promtool("test", "rules", str(tmp_path / RULE_TESTS.name))


def test_service_monitors_scrape_metrics_of_both_services_as_the_job_the_rules_select(
    served: dict[str, dict[int, set[str]]],
) -> None:
    jobs = set(re.findall(r'job="([^"]+)"', RULES.read_text()))
    monitors = [o for o in applied() if o["kind"] == "ServiceMonitor"]
    scraped = set()
    for monitor in monitors:
        spec = monitor["spec"]
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(spec) <= SERVICE_MONITOR_FIELDS
        (service,) = selected(spec["selector"]["matchLabels"], "Service")
        assert {service["metadata"]["labels"][spec["jobLabel"]]} == jobs
        (workload,) = selected(service["spec"]["selector"], "Deployment")
        container = only_container(workload)
        # one port each: the gateway's ports all serve the same merged numbers
        (endpoint,) = spec["endpoints"]
        assert set(endpoint) <= ENDPOINT_FIELDS
        (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
        number = container_port(container, port["targetPort"])
        assert endpoint["path"] in served[container["name"]][number]
        scraped.add(service["metadata"]["name"])
    assert scraped == {"lineage-gateway", "lineage-gateway-controller"}


# -- the probes against real processes -----------------------------------------------------------
def grpc_serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def test_every_probe_answers_on_a_real_gateway_and_controller(
    tmp_path: Path, loans_data: Path
) -> None:
    """The manifests' probes, each sent to the port of a running process that the manifests'
    port stands for (the processes bind free ports here)."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    train_ok(store, "loans", "--data", str(loans_data), *FAST_LOANS)
    grpc_port = free_port()
    shared = {"state_dir": str(tmp_path / "state")}
    gateway = only_container(named("Deployment", "lineage-gateway"))
    controller = only_container(named("Deployment", "lineage-gateway-controller"))
    gateway_settings = settings_of(gateway)
    with (
        serve_gateway(
            store, tmp_path, workers=1, settings={**shared, "grpc_port": str(grpc_port)}
        ) as (base, data),
        run_controller(store, tmp_path, settings=shared) as (loop, _),
    ):
        urls = {
            (gateway["name"], BENTOML_PORT): base,
            (gateway["name"], gateway_settings.data_port): data,
            (controller["name"], settings_of(controller).controller_port): loop,
        }
        for container in (gateway, controller):
            for probe, port, path in http_probes(container):
                response = httpx.get(urls[container["name"], port] + path, timeout=10)
                assert response.status_code == 200, f"{container['name']} {probe} {path}"
        assert grpc_serving(grpc_port)
