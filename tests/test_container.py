"""The image, built from the Dockerfile unchanged and run with podman: the user it runs as, what
it leaves out, its HEALTHCHECK, readiness, a lookup through the container against the userli
stand-in, a read-only root filesystem without capabilities, and a clean exit on SIGTERM.

Needs podman and the Dockerfile's base image: ``.ci/container-setup`` prepares both (it pulls the
base, or builds a stand-in from Debian packages when no registry answers). Run alone with
``pytest -m container``.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import TOKEN, SocketmapClient, UserliStub, free_port, wait_until

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "localhost/userli-postfix-adapter:test"
BASE = "docker.io/library/python:3.11-slim-bookworm"
BASE_NOTE = Path("/var/lib/containers/userli-adapter-base")  # written by .ci/container-setup


def limits() -> list[str]:
    """podman's default limits are higher than this machine's hard ones, which runc cannot raise
    (an nproc equal to the hard limit was refused too; 4096 is plenty for the adapter)."""
    files = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    processes = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 4096)
    return [f"--ulimit=nofile={files}:{files}", f"--ulimit=nproc={processes}:{processes}"]


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    if shutil.which("podman") is None or podman("image", "exists", BASE, check=False).returncode != 0:
        if os.environ.get("CI"):
            pytest.fail("podman or the base image is missing in CI: .ci/run must run .ci/container-setup")
        pytest.skip("podman and the base image are not prepared (bash .ci/container-setup)")
    base = BASE_NOTE.read_text().strip() if BASE_NOTE.exists() else BASE
    print(f"\ncontainer test: base image {base}")
    started = time.monotonic()
    # --format docker keeps HEALTHCHECK (the OCI format drops it); host network: no bridge here.
    podman("build", "--format", "docker", "--network", "host", "-t", IMAGE, str(ROOT), timeout=900)
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    print(f"container test: built in {time.monotonic() - started:.0f} s, image size {size / 1e6:.0f} MB")
    yield IMAGE


def test_the_image_runs_as_a_named_non_root_user_and_carries_no_build_tools(image: str) -> None:
    assert podman("run", "--rm", *limits(), "--entrypoint", "id", image).stdout.strip() == (
        "uid=10001(adapter) gid=10001(adapter) groups=10001(adapter)"
    )
    leftovers = podman(
        "run",
        "--rm",
        *limits(),
        "--entrypoint",
        "sh",
        image,
        "-c",
        "command -v gcc cc c++ clang make; ls -d /wheels /src /opt/adapter/bin/pip 2>/dev/null; true",
    )
    assert leftovers.stdout.strip() == ""
    # Not in a lower layer either (a COPY of /wheels followed by `rm -rf /wheels` kept 6 MB).
    history = podman("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    assert "/wheels" not in history
    inspect = json.loads(podman("image", "inspect", image).stdout)[0]
    assert inspect["Healthcheck"]["Test"] == ["CMD", "python", "-m", "adapter.healthcheck"]  # kept: docker format
    assert inspect["Config"]["User"] == "10001:10001"
    assert inspect["Config"]["StopSignal"] == "SIGTERM"


@pytest.fixture
def container(image: str) -> Iterator[tuple[str, dict[str, int], UserliStub]]:
    stub = UserliStub().start()
    ports = {"socketmap": free_port(), "metrics": free_port(), "policy": free_port()}
    name = f"adapter-test-{os.getpid()}"
    podman(
        "run",
        "--detach",
        "--name",
        name,
        "--read-only",
        "--cap-drop=all",
        *limits(),
        "--network",
        "host",
        "-e",
        f"USERLI_TOKEN={TOKEN}",
        "-e",
        f"USERLI_BASE_URL={stub.url}",
        "-e",
        f"SOCKETMAP_LISTEN_ADDR=127.0.0.1:{ports['socketmap']}",
        "-e",
        f"METRICS_LISTEN_ADDR=127.0.0.1:{ports['metrics']}",
        "-e",
        f"POLICY_LISTEN_ADDR=127.0.0.1:{ports['policy']}",
        image,
    )
    try:
        wait_until(lambda: http_status(f"http://127.0.0.1:{ports['metrics']}/health") == 200, timeout=30)
        yield name, ports, stub
    finally:
        logs = podman("logs", name, check=False)
        podman("rm", "--force", name, check=False)
        stub.stop()
        print(logs.stderr[-2000:])


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_the_container_serves_lookups_read_only_and_stops_cleanly(
    container: tuple[str, dict[str, int], UserliStub],
) -> None:
    name, ports, stub = container
    assert podman("healthcheck", "run", name, check=False).returncode == 0  # the image's own HEALTHCHECK
    assert http_status(f"http://127.0.0.1:{ports['metrics']}/ready") == 200
    with SocketmapClient(ports["socketmap"]) as client:
        assert client.query("mailbox", "User@Example.org") == "OK 1"
        assert client.query("alias", "nobody@example.org") == "NOTFOUND "
    assert "/api/postfix/mailbox/user@example.org" in stub.paths()
    inspect = json.loads(podman("inspect", name).stdout)[0]
    assert inspect["HostConfig"]["ReadonlyRootfs"] is True
    assert inspect["HostConfig"]["CapDrop"] and not inspect["HostConfig"]["CapAdd"]
    started = time.monotonic()
    podman("stop", "--time", "15", name)  # SIGTERM; SIGKILL only after 15 s
    assert time.monotonic() - started < 5
    assert podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"
