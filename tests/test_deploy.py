"""The Dockerfile, docker-compose.yml, .env.example and k8s/ manifests: linted and validated
offline, and checked against the code, so that renaming a variable, a port or a path in one place
only fails here."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import helpers
import pytest
import yaml

from adapter.config import Config, parse_duration, parse_listen_address

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"


def variables_the_code_reads() -> set[str]:
    return helpers.variables_the_code_reads()


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
    assert environment["USERLI_BASE_URL"] == "http://userli-web"  # the web server, not the FPM container
    assert parse_listen_address(environment["METRICS_LISTEN_ADDR"]).port == 10002


def test_compose_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    adapter = services["adapter"]["depends_on"]
    assert adapter["userli-init"]["condition"] == "service_completed_successfully"
    assert adapter["userli-web"]["condition"] == "service_healthy"
    assert adapter["redis"]["condition"] == "service_healthy"
    assert services["userli-web"]["depends_on"]["userli"]["condition"] == "service_healthy"
    assert services["userli"]["depends_on"]["userli-init"]["condition"] == "service_completed_successfully"
    assert services["postfix"]["depends_on"]["adapter"]["condition"] == "service_healthy"
    for name in ("userli", "userli-web", "mariadb", "redis"):
        assert "healthcheck" in services[name], name
    assert services["adapter"]["environment"]["REDIS_URL"].startswith("redis://redis:")


def test_compose_userli_is_fpm_behind_nginx_with_its_worker(compose: dict[str, Any]) -> None:
    """systemli/userli is PHP-FPM on port 9000 with no web server inside (userli-api.md)."""
    services = compose["services"]
    web = services["userli-web"]
    assert web["image"].startswith("nginx:")
    conf = next(v for v in web["volumes"] if v.startswith("./docker/userli-nginx.conf:"))
    assert conf.split(":")[1] == "/etc/nginx/conf.d/default.conf"
    assert "fastcgi_pass userli:9000;" in (ROOT / "docker" / "userli-nginx.conf").read_text()
    # The FPM healthcheck asks PHP-FPM's port; no check asks a web server the image lacks.
    assert "9000" in " ".join(services["userli"]["healthcheck"]["test"])
    assert "localhost/" not in str(services["userli"]["healthcheck"])
    assert "/login" in " ".join(web["healthcheck"]["test"])
    # public/ reaches nginx through a volume the init fills from the userli image.
    assert "userli-public:/var/www/html/public:ro" in web["volumes"]
    assert "userli-public:/srv/userli-public" in services["userli-init"]["volumes"]
    init = (ROOT / "docker" / "userli-init.sh").read_text()
    assert "cp -a /var/www/html/public/. /srv/userli-public/" in init
    assert "doctrine:fixtures:load --group=basic --append" in init
    # userli's cache is invalidated through its queue: the worker must run.
    worker = services["userli-worker"]
    assert worker["image"] == services["userli"]["image"]
    assert worker["command"][:4] == ["php", "bin/console", "messenger:consume", "async"]
    # Every mail (userli's, Postfix's) goes to the catcher that exists here.
    assert services["userli"]["environment"]["MAILER_DSN"].startswith("smtp://mailpit:1025")
    assert "mailpit" in services and "mailcatcher" not in str(compose)
    assert set(services["postfix"]["environment"]["ALLOWED_SENDER_DOMAINS"].split()[:2]) == {
        "example.org",
        "example.com",
    }


def test_nginx_accepts_the_userli_configuration(tmp_path: Path) -> None:
    """nginx's own check. The one change: the FPM host, which only compose's network resolves."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is missing in CI: .ci/run must install the nginx-light package")
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    server = (ROOT / "docker" / "userli-nginx.conf").read_text().replace("userli:9000", "127.0.0.1:9000")
    (tmp_path / "userli.conf").write_text(server)
    shutil.copy("/etc/nginx/fastcgi_params", tmp_path / "fastcgi_params")
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
        f"http {{ access_log off; client_body_temp_path {tmp_path}; include {tmp_path}/userli.conf; }}\n"
    )
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_one_image_reference_everywhere(
    compose: dict[str, Any], manifests: dict[tuple[str, str], dict[str, Any]]
) -> None:
    """The image a user pulls: the same in compose, Kubernetes, the README and the release workflow."""
    from adapter import __version__

    image = compose["services"]["adapter"]["image"]
    repository, tag = image.rsplit(":", 1)
    assert tag == __version__
    container = manifests[("Deployment", "userli-postfix-adapter")]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == image
    assert image in (ROOT / "README.md").read_text()
    assert repository in (ROOT / ".github" / "workflows" / "release.yml").read_text()


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


# The kustomization itself, and the Prometheus operator's resources (optional; the validator does
# not know their kinds): the ServiceMonitor and the PrometheusRule (tests/test_monitoring.py).
NOT_PLAIN_KUBERNETES = {"kustomization.yaml", "servicemonitor.yaml", "prometheusrule.yaml"}


def test_every_manifest_is_valid_kubernetes() -> None:
    files = [str(p) for p in sorted(K8S.glob("*.yaml")) if p.name not in NOT_PLAIN_KUBERNETES]
    result = subprocess.run([tool("kubernetes-validate"), "--strict", *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") + result.stderr.count("passed") >= len(files)


def test_kustomization_lists_every_manifest_but_the_optional_ones() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - NOT_PLAIN_KUBERNETES
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


# How the kubelet lays out Secret, ConfigMap and projected volumes: every file owned by root,
# its group the pod's fsGroup when set (else root), its mode the item's `mode`, else the volume's
# `defaultMode`, else 0644. The container's process has runAsUser, runAsGroup (else 0), and as
# supplementary groups the fsGroup and supplementalGroups.
FILE_VARIABLES = ("USERLI_TOKEN_FILE", "USERLI_CA_FILE", "USERLI_CLIENT_CERT", "USERLI_CLIENT_KEY", "SSL_CERT_FILE")


Manifests = dict[tuple[str, str], dict[str, Any]]


def kubelet_files(
    pod: dict[str, Any], container: dict[str, Any], manifests: Manifests
) -> dict[str, tuple[int, int, int]]:
    """path -> (uid, gid, mode) of every file the kubelet writes into ``container``'s volumes."""
    fs_group = pod.get("securityContext", {}).get("fsGroup")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    files: dict[str, tuple[int, int, int]] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        sources = [volume] if "projected" not in volume else volume["projected"]["sources"]
        default_mode = volume.get("projected", volume).get("defaultMode")
        for source in sources:
            kind = "secret" if "secret" in source else "configMap" if "configMap" in source else None
            if kind is None:
                continue
            spec = source[kind]
            mode = spec.get("defaultMode", default_mode if default_mode is not None else 0o644)
            items = spec.get("items") or [{"key": key, "path": key} for key in keys_of(kind, spec, manifests)]
            for item in items:
                files[f"{mount['mountPath']}/{item['path']}"] = (0, fs_group or 0, item.get("mode", mode))
    return files


def keys_of(kind: str, spec: dict[str, Any], manifests: Manifests) -> list[str]:
    name = spec.get("secretName") or spec.get("name")
    resource = manifests[("Secret" if kind == "secret" else "ConfigMap", name)]
    return list({**resource.get("data", {}), **resource.get("stringData", {})})


def readable(file: tuple[int, int, int], uid: int, groups: set[int]) -> bool:
    owner, group, mode = file
    if uid == owner:
        return bool(mode & 0o400)
    if group in groups:
        return bool(mode & 0o040)
    return bool(mode & 0o004)


def test_the_container_user_can_read_every_file_the_adapter_reads(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    """The kubelet writes the token Secret as root; with fsGroup its group is the pod's, and 0440
    is readable by UID 10001. Without fsGroup the adapter crash-looped (issue 14)."""
    pod = manifests[("Deployment", "userli-postfix-adapter")]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    uid, gid = security["runAsUser"], security.get("runAsGroup", 0)
    groups = {gid, *security.get("supplementalGroups", [])} | (
        {security["fsGroup"]} if "fsGroup" in security else set()
    )
    files = kubelet_files(pod, container, manifests)
    environment = manifests[("ConfigMap", "userli-postfix-adapter")]["data"]
    wanted = [environment[name] for name in FILE_VARIABLES if environment.get(name)]
    assert environment["USERLI_TOKEN_FILE"] in wanted
    for path in wanted:
        assert path in files, f"{path} is in no mounted Secret or ConfigMap"
        assert readable(files[path], uid, groups), f"UID {uid} (groups {groups}) cannot read {path}: {files[path]}"


def test_the_model_sees_the_crash_loop_it_guards_against(manifests: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Without fsGroup the same manifest gives a root:root 0440 token: unreadable for UID 10001."""
    pod = copy.deepcopy(manifests[("Deployment", "userli-postfix-adapter")]["spec"]["template"]["spec"])
    del pod["securityContext"]["fsGroup"]
    token = manifests[("ConfigMap", "userli-postfix-adapter")]["data"]["USERLI_TOKEN_FILE"]
    file = kubelet_files(pod, pod["containers"][0], manifests)[token]
    assert file == (0, 0, 0o440)
    assert not readable(file, 10001, {10001})


# --- Publishing -------------------------------------------------------------------------------


def test_release_workflow_passes_actionlint_and_publishes_the_documented_image(compose: dict[str, Any]) -> None:
    workflow_path = ROOT / ".github" / "workflows" / "release.yml"
    result = subprocess.run([tool("actionlint"), str(workflow_path)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    workflow = yaml.safe_load(workflow_path.read_text())
    assert workflow["env"]["IMAGE"] == compose["services"]["adapter"]["image"].rsplit(":", 1)[0]
    assert workflow[True]["push"]["tags"] == ["v*"]  # YAML 1.1 reads the key "on" as true
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    build = next(step for step in steps if str(step.get("uses", "")).startswith("docker/build-push-action@"))
    assert set(build["with"]["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert "sed -n 's/^__version__ = \"\\(.*\\)\"$/\\1/p' adapter/__init__.py" in workflow_path.read_text()
    version = re.search(r'^__version__ = "(.*)"$', (ROOT / "adapter" / "__init__.py").read_text(), re.M)
    assert version is not None  # the line the workflow reads is there, in that form


def test_the_readme_walk_through_matches_the_compose_file(compose: dict[str, Any]) -> None:
    """Every address, service and port the walk-through uses is one the compose file has."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### A whole mail stack with docker compose") : readme.index("### Kubernetes")]
    services = compose["services"]
    published = {
        int(port.split(":")[-2]): name for name, service in services.items() for port in service.get("ports", [])
    }
    for port in {int(p) for p in re.findall(r"localhost:(\d+)", section)} | {
        int(p) for p in re.findall(r'SMTP\("localhost", (\d+)\)', section)
    }:
        assert port in published, f"localhost:{port} is published by no service"
    assert published[2525] == "postfix" and published[8025] == "mailpit" and published[8000] == "userli-web"
    for service in re.findall(r"docker compose exec (\S+)", section):
        assert service in services, service
    socketmap_port = port_of(services["adapter"]["environment"]["SOCKETMAP_LISTEN_ADDR"])
    for host, port, name in re.findall(r"socketmap:inet:(\w+):(\d+):(\w+)", section):
        assert (host, int(port)) == ("adapter", socketmap_port) and name in ("alias", "domain", "mailbox", "senders")
    assert set(re.findall(r"^\| `([\w-]+)`", section, re.M)) | {"redis"} == set(services)
