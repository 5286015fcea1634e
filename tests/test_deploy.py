"""deploy/: the compose file, the Dockerfiles and the Kubernetes manifests are well-formed and agree.

No container engine runs on these machines, so the files are checked statically: YAML
parses, the structure is what clipfuse needs (health checks, GPU reservations, probes),
every ``CLIPFUSE_*`` variable names a real setting, and, when Debian's ``docker-compose``
is installed, ``docker-compose config`` validates the compose file against its schema.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from clipfuse.settings import Settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"


def _settings_path_exists(env_name: str) -> bool:
    """Whether ``CLIPFUSE_A__B`` names a field ``a.b`` of :class:`Settings`."""
    parts = env_name.removeprefix("CLIPFUSE_").lower().split("__")
    model: Any = Settings
    for part in parts:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return False
        annotation = model.model_fields[part].annotation
        model = annotation if isinstance(annotation, type) else None
    return True


def _env_names(mapping: dict[str, Any] | list[Any] | None) -> set[str]:
    if isinstance(mapping, dict):
        return set(mapping)
    return {str(item).split("=", 1)[0] for item in mapping or []}


# -- compose ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_has_the_services_with_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "qdrant", "elasticsearch", "worker", "service"}
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL"), f"{name} has no health check"
        assert service.get("restart") == "unless-stopped", name
    assert services["elasticsearch"]["environment"]["discovery.type"] == "single-node"
    assert services["service"]["healthcheck"]["test"][-1].count("/healthz") == 1


def test_compose_worker_reserves_a_nvidia_gpu(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert worker["environment"]["CLIPFUSE_MODEL__DEVICE"] == "cuda"
    assert worker["build"]["dockerfile"] == "deploy/Dockerfile.worker"
    assert "service" not in compose["services"]["service"].get("deploy", {})  # the search service needs no GPU


def test_compose_wiring_volumes_and_ports(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("worker", "service"):
        depends = services[name]["depends_on"]
        assert depends == {"redis": {"condition": "service_healthy"}, "qdrant": {"condition": "service_healthy"}}
        env = services[name]["environment"]
        assert env["CLIPFUSE_QDRANT__URL"] == "http://qdrant:6333"
        assert env["CLIPFUSE_BROKER__URL"] == "redis://redis:6379/0"
    assert services["service"]["ports"] == ["8000:8000"]
    assert services["service"]["environment"]["CLIPFUSE_SERVICE__HOST"] == "0.0.0.0"
    declared = set(compose["volumes"])
    used = {
        spec.split(":", 1)[0]
        for service in services.values()
        for spec in service.get("volumes", [])
        if not spec.startswith(("/", ".", "$"))
    }
    assert used == declared
    for name in ("redis", "qdrant", "elasticsearch"):
        assert services[name].get("volumes"), f"{name} keeps its data in a volume"


def test_compose_variables_are_real_settings(compose: dict[str, Any]) -> None:
    names = set()
    for service in compose["services"].values():
        names |= {n for n in _env_names(service.get("environment")) if n.startswith("CLIPFUSE_")}
    assert names
    unknown = sorted(n for n in names if not _settings_path_exists(n))
    assert not unknown, f"not settings of clipfuse: {unknown}"


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (Debian package) not installed")
def test_docker_compose_config_validates() -> None:
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "CLIPFUSE_API_KEY": "x" * 32, "HOME": str(Path.home())}
    result = subprocess.run(
        ["docker-compose", "-f", str(DEPLOY / "docker-compose.yml"), "--profile", "elasticsearch", "config"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert rendered["services"]["service"]["environment"]["CLIPFUSE_SERVICE__API_KEY"] == "x" * 32
    assert rendered["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"


# -- Dockerfiles --------------------------------------------------------------------------
def _instructions(name: str) -> list[tuple[str, str]]:
    text = (DEPLOY / name).read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _extras() -> dict[str, list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return dict(project.get("optional-dependencies", {}))


def test_worker_dockerfile_runs_on_a_cuda_runtime() -> None:
    steps = _instructions("Dockerfile.worker")
    args = dict(rest.split("=", 1) for keyword, rest in steps if keyword == "ARG" and "=" in rest)
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu[\d.]+", args["CUDA_IMAGE"])
    assert args["TORCH_INDEX"].startswith("https://download.pytorch.org/whl/cu")
    assert [rest for keyword, rest in steps if keyword == "FROM"][-1] == "${CUDA_IMAGE}"
    cmd = next(rest for keyword, rest in reversed(steps) if keyword == "CMD")
    assert "clipfuse.workers.cli" in cmd and '"worker"' in cmd and '"cuda"' in cmd
    assert ("USER", "clipfuse") in steps


def test_service_dockerfile_is_slim_with_cpu_torch() -> None:
    steps = _instructions("Dockerfile.service")
    args = dict(rest.split("=", 1) for keyword, rest in steps if keyword == "ARG" and "=" in rest)
    assert args["PYTHON_IMAGE"].startswith("python:3.") and "slim" in args["PYTHON_IMAGE"]
    assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    runs = " ".join(rest for keyword, rest in steps if keyword == "RUN")
    assert "--index-url ${TORCH_INDEX} torch" in runs and '"/src[service]"' in runs
    assert any(keyword == "HEALTHCHECK" and "/healthz" in rest for keyword, rest in steps)
    assert next(rest for keyword, rest in reversed(steps) if keyword == "CMD") == '["clipfuse", "serve"]'
    assert ("EXPOSE", "8000") in steps


def test_service_extra_has_the_service_dependencies() -> None:
    extras = _extras()
    assert "service" in extras, "pyproject.toml needs a 'service' extra (the service Dockerfile installs .[service])"
    names = {re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower() for requirement in extras["service"]}
    assert {"fastapi", "uvicorn", "python-multipart", "prometheus-client"} <= names


def test_images_install_their_role() -> None:
    """The worker image installs the workers role (Celery, the model); the service image the query
    role (the model, ONNX Runtime, no broker client: it only searches)."""
    worker = re.findall(r"/src\[([a-z,-]+)\]", (DEPLOY / "Dockerfile.worker").read_text())
    service = re.findall(r"/src\[([a-z,-]+)\]", (DEPLOY / "Dockerfile.service").read_text())
    assert worker and "workers" in worker[0].split(",")
    assert service == ["service"]
    extras = _extras()
    names = {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower() for r in extras["service"]}
    assert not names & {"celery", "kombu", "redis", "celery-batches"}
    assert "clipfuse[model,onnx]" in extras["service"]
    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not any(r.startswith(("torch", "celery", "kombu", "open_clip")) for r in core)


def test_dockerfiles_install_extras_that_exist() -> None:
    extras = set(_extras())
    for name in ("Dockerfile.worker", "Dockerfile.service"):
        for wanted in re.findall(r"/src\[([a-z,-]+)\]", (DEPLOY / name).read_text()):
            assert set(wanted.split(",")) <= extras, f"{name} installs extras {wanted} but pyproject has {extras}"


def test_dockerignore_files_keep_the_context_small() -> None:
    for name in ("Dockerfile.worker", "Dockerfile.service"):
        lines = (DEPLOY / f"{name}.dockerignore").read_text().splitlines()
        assert "*" in lines and "!clipfuse/" in lines and "!pyproject.toml" in lines


# -- Kubernetes -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            assert {"apiVersion", "kind", "metadata"} <= set(doc), path
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in out, f"duplicate {key}"
            out[key] = doc
    return out


_API_VERSIONS = {
    "Namespace": "v1",
    "ConfigMap": "v1",
    "Secret": "v1",
    "Service": "v1",
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
}


def test_k8s_kinds_and_api_versions(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    for (kind, name), doc in manifests.items():
        assert doc["apiVersion"] == _API_VERSIONS[kind], (kind, name)
        if kind != "Namespace":
            assert doc["metadata"]["namespace"] == "clipfuse", (kind, name)
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def _pod(doc: dict[str, Any]) -> dict[str, Any]:
    template = doc["spec"]["template"]
    assert doc["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    return template["spec"]


def test_k8s_worker_requests_a_gpu(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    pod = _pod(manifests[("Deployment", "clipfuse-worker")])
    (container,) = pod["containers"]
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1 and resources["requests"]["nvidia.com/gpu"] == 1
    assert pod["terminationGracePeriodSeconds"] >= 300
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert {"name": "CLIPFUSE_MODEL__DEVICE", "value": "cuda"} in container["env"]


def test_k8s_service_is_ready_on_healthz(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    deployment = manifests[("Deployment", "clipfuse-search")]
    pod = _pod(deployment)
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    readiness = container["readinessProbe"]["httpGet"]
    assert readiness["path"] == "/healthz" and readiness["port"] in ports
    assert "httpGet" not in container["livenessProbe"]  # an engine outage must not restart the pods
    assert "nvidia.com/gpu" not in str(container["resources"])
    service = manifests[("Service", "clipfuse-search")]
    assert service["spec"]["selector"].items() <= pod_labels(deployment).items()
    assert service["spec"]["ports"][0]["targetPort"] in ports
    hpa = manifests[("HorizontalPodAutoscaler", "clipfuse-search")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "clipfuse-search"


def pod_labels(doc: dict[str, Any]) -> dict[str, str]:
    return dict(doc["spec"]["template"]["metadata"]["labels"])


def test_k8s_config_comes_from_configmap_and_secret(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    config = manifests[("ConfigMap", "clipfuse-config")]["data"]
    secret = manifests[("Secret", "clipfuse-secrets")]["stringData"]
    assert "CLIPFUSE_SERVICE__API_KEY" in secret and "CLIPFUSE_BROKER__URL" in secret
    names = {n for n in (*config, *secret) if n.startswith("CLIPFUSE_")}
    for name in ("clipfuse-worker", "clipfuse-search"):
        (container,) = _pod(manifests[("Deployment", name)])["containers"]
        sources = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
        assert sources == {"clipfuse-config", "clipfuse-secrets"}
        names |= {e["name"] for e in container.get("env", []) if e["name"].startswith("CLIPFUSE_")}
    unknown = sorted(n for n in names if not _settings_path_exists(n))
    assert not unknown, f"not settings of clipfuse: {unknown}"


def test_k8s_services_select_their_pods(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    workloads = [doc for (kind, _), doc in manifests.items() if kind in ("Deployment", "StatefulSet")]
    for (kind, name), doc in manifests.items():
        if kind != "Service":
            continue
        selector = doc["spec"]["selector"]
        assert any(selector.items() <= pod_labels(w).items() for w in workloads), f"Service {name} selects no pods"
