"""The Dockerfile, docker-compose.yml, .env.example and k8s/ manifests: linted and validated
offline, and checked against the code, so that renaming a variable, a port or a path in one place
only fails here."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapter.config import Config, parse_duration, parse_listen_address

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"


class RecordingEnv(dict[str, str]):
    """An environment that remembers every variable the code asks for."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.asked.add(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self.asked.add(str(key))
        return super().__contains__(key)

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return super().__getitem__(key)


def variables_the_code_reads() -> set[str]:
    env = RecordingEnv({"USERLI_TOKEN": "x"})
    Config.from_env(env)
    return env.asked


def tool(name: str) -> str:
    path = shutil.which(name) or str(Path(sys.executable).parent / name)
    assert Path(path).exists(), f"{name} is missing: pip install -e '.[test]'"
    return path


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def port_of(addr: str) -> int:
    port = parse_listen_address(addr).port
    assert port is not None, addr
    return port


# --- Dockerfile -------------------------------------------------------------------------------


def test_hadolint() -> None:
    result = subprocess.run([tool("hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_dockerfile_shape() -> None:
    instructions = dockerfile_instructions()
    froms = [arg for op, arg in instructions if op == "FROM"]
    assert len(froms) >= 2, "multi-stage: build the wheel apart from the runtime image"
    final_stage = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM") :]
    ops = dict(final_stage)
    assert ops["USER"].split(":")[0] == "10001"
    assert ops["STOPSIGNAL"] == "SIGTERM"
    assert "adapter.healthcheck" in ops["HEALTHCHECK"]
    assert not any(word in ops.get("RUN", "") for word in ("gcc", "apt-get", "curl"))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert ops["ENTRYPOINT"] == f'["{next(iter(scripts))}"]'


def test_dockerfile_exposes_the_default_ports() -> None:
    exposed = {int(p) for op, arg in dockerfile_instructions() if op == "EXPOSE" for p in arg.split()}
    defaults = Config.from_env({"USERLI_TOKEN": "x"})
    listeners = [defaults.socketmap_address, defaults.metrics_address, defaults.policy_address]
    assert {a.port for a in listeners if a is not None} | {10004} == exposed  # 10004: SASL, off by default


def test_dockerignore_sends_only_what_the_build_needs() -> None:
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*"
    for allowed in (line[1:].rstrip("/") for line in lines if line.startswith("!")):
        assert (ROOT / allowed).exists(), allowed
    copied = {arg.split()[0] for op, arg in dockerfile_instructions() if op == "COPY" and "--from" not in arg}
    assert copied <= {"pyproject.toml", "adapter"}


# --- docker compose ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def env_example() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line]
    return {k.strip(): v.strip() for k, v in pairs if not k.strip().startswith("#")}


def interpolated(value: str) -> str:
    """Compose's ${VAR:-default} with no .env: the default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def test_compose_matches_the_compose_specification() -> None:
    result = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_env_example_has_only_variables_the_code_reads_and_valid_values() -> None:
    example = env_example()
    assert set(example) <= variables_the_code_reads()
    Config.from_env({**example, "USERLI_TOKEN": "x"})  # every value parses


def test_compose_adapter_environment(compose: dict[str, Any], tmp_path: Path) -> None:
    environment = {k: interpolated(v) for k, v in compose["services"]["adapter"]["environment"].items()}
    assert set(environment) <= variables_the_code_reads()
    # Every variable of .env.example reaches the adapter, and the other way round.
    settings = compose["x-adapter-settings"]
    assert set(settings) == set(env_example())
    assert all(f"${{{name}:-" in str(value) for name, value in settings.items())
    token = tmp_path / "token"
    token.write_text("x")
    config = Config.from_env({**environment, "USERLI_TOKEN_FILE": str(token)})
    # The token file lies in a volume the init service writes and the adapter mounts.
    mount = next(v for v in compose["services"]["adapter"]["volumes"] if v.startswith("userli-token:"))
    assert environment["USERLI_TOKEN_FILE"].startswith(mount.split(":")[1] + "/")
    assert environment["USERLI_TOKEN_FILE"] in (ROOT / "docker" / "userli-init.sh").read_text()
    assert any(v.startswith("userli-token:") for v in compose["services"]["userli-init"]["volumes"])
    # Postfix is wired to the ports the adapter listens on.
    postfix = " ".join(str(v) for v in compose["services"]["postfix"]["environment"].values())
    assert config.policy_address is not None and config.sasl_address is not None
    assert f"socketmap:inet:adapter:{config.socketmap_address.port}:" in postfix
    assert f"check_policy_service inet:adapter:{config.policy_address.port}" in postfix
    assert f"inet:adapter:{config.sasl_address.port}" in postfix
    published = {port.split(":")[-1] for port in compose["services"]["adapter"]["ports"]}
    assert published == {str(config.metrics_address.port)}
    assert environment["USERLI_BASE_URL"] == "http://userli"
    assert parse_listen_address(environment["METRICS_LISTEN_ADDR"]).port == 10002


def test_compose_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    adapter = services["adapter"]["depends_on"]
    assert adapter["userli-init"]["condition"] == "service_completed_successfully"
    assert adapter["userli"]["condition"] == "service_healthy"
    assert adapter["redis"]["condition"] == "service_healthy"
    assert services["postfix"]["depends_on"]["adapter"]["condition"] == "service_healthy"
    for name in ("userli", "mariadb", "redis"):
        assert "healthcheck" in services[name], name
    assert services["adapter"]["environment"]["REDIS_URL"].startswith("redis://redis:")


# --- Kubernetes -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    resources = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_all(path):
            resources[(doc["kind"], doc["metadata"]["name"])] = doc
    return resources


def test_every_manifest_is_valid_kubernetes() -> None:
    files = [str(p) for p in sorted(K8S.glob("*.yaml")) if p.name not in ("kustomization.yaml", "servicemonitor.yaml")]
    result = subprocess.run([tool("kubernetes-validate"), "--strict", *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") + result.stderr.count("passed") >= len(files)


def test_kustomization_lists_every_manifest_but_the_optional_one() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "servicemonitor.yaml"}
    assert listed == present


def test_deployment_matches_the_code(manifests: dict[tuple[str, str], dict[str, Any]], tmp_path: Path) -> None:
    deployment = manifests[("Deployment", "userli-postfix-adapter")]
    config_map = manifests[("ConfigMap", "userli-postfix-adapter")]["data"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert deployment["spec"]["replicas"] == 2
    assert container["envFrom"] == [{"configMapRef": {"name": "userli-postfix-adapter"}}]
    assert set(config_map) <= variables_the_code_reads()

    # The token: a Secret mounted as a file, read through USERLI_TOKEN_FILE.
    token_path = Path(config_map["USERLI_TOKEN_FILE"])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(token_path.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    secret = manifests[("Secret", volume["secret"]["secretName"])]
    assert token_path.name in secret["stringData"]
    token = tmp_path / "token"
    token.write_text("x")
    config = Config.from_env({**config_map, "USERLI_TOKEN_FILE": str(token)})

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert config.policy_address is not None and config.sasl_address is not None
    assert ports == {
        "socketmap": config.socketmap_address.port,
        "metrics": config.metrics_address.port,
        "policy": config.policy_address.port,
        "sasl": config.sasl_address.port,
    }
    for probe, path in (("startupProbe", "/health"), ("livenessProbe", "/health"), ("readinessProbe", "/ready")):
        assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}, probe

    # Draining: the grace period covers the preStop pause and SHUTDOWN_TIMEOUT.
    pre_stop = " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    pause = float(re.search(r"sleep\((\d+(?:\.\d+)?)\)", pre_stop).group(1))  # type: ignore[union-attr]
    assert pod["terminationGracePeriodSeconds"] > pause + parse_duration(config_map["SHUTDOWN_TIMEOUT"])

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's USER
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]


def test_service_pdb_hpa_and_redis_fit_together(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    deployment = manifests[("Deployment", "userli-postfix-adapter")]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    container_ports = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    service = manifests[("Service", "userli-postfix-adapter")]
    assert service["spec"]["selector"] == labels
    assert {p["targetPort"] for p in service["spec"]["ports"]} == container_ports
    assert manifests[("PodDisruptionBudget", "userli-postfix-adapter")]["spec"]["selector"]["matchLabels"] == labels
    hpa = manifests[("HorizontalPodAutoscaler", "userli-postfix-adapter")]["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["minReplicas"] >= 2
    # REDIS_URL points at the Redis Service.
    redis_url = manifests[("ConfigMap", "userli-postfix-adapter")]["data"]["REDIS_URL"]
    host, port = re.match(r"redis://([^:/]+):(\d+)", redis_url).groups()  # type: ignore[union-attr]
    redis_service = manifests[("Service", host)]
    assert int(port) in {p["port"] for p in redis_service["spec"]["ports"]}
    assert ("StatefulSet", host) in manifests
    monitor = load_all(K8S / "servicemonitor.yaml")[0]
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
