from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import RedisServer, RunningService, UserliStub, config_for

from adapter import userli as userli_module


@pytest.fixture(autouse=True)
def _mockable_userli_transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """pytest-httpx intercepts httpx's own transport only: tests that mock userli with it run the
    client on that one. Every other test (a real HTTP stub) runs the production transport."""
    if "httpx_mock" in request.fixturenames:
        monkeypatch.setattr(userli_module, "transport", lambda config: httpx.AsyncHTTPTransport())


@pytest.fixture
def userli() -> Iterator[UserliStub]:
    stub = UserliStub().start()
    yield stub
    stub.stop()


@pytest.fixture
def start_adapter(userli: UserliStub) -> Iterator[Callable[..., RunningService]]:
    """Start the service against the stub with config overrides; every one is stopped at teardown."""
    started: list[RunningService] = []

    def start(**overrides: Any) -> RunningService:
        running = RunningService(config_for(userli.url, **overrides))
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def adapter(start_adapter: Callable[..., RunningService]) -> RunningService:
    return start_adapter()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing in CI: .ci/run must install the redis-server package")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(binary, str(tmp_path)).start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def postfix_available() -> None:
    if not (shutil.which("postfix") or os.path.exists("/usr/sbin/postfix")):
        if os.environ.get("CI"):
            pytest.fail("postfix is missing in CI: .ci/run must install the postfix package")
        pytest.skip("Postfix is not installed (apt-get install postfix)")


@pytest.fixture
def start_postfix(postfix_available: None) -> Iterator[Callable[..., Any]]:
    """Start private Postfix instances (main.cf overrides as keyword dict); all stopped at teardown."""
    from postfix import PostfixInstance

    started: list[PostfixInstance] = []

    def start(main_cf: dict[str, str] | None = None, services: dict[str, str] | None = None) -> PostfixInstance:
        instance = PostfixInstance(main_cf, services)
        started.append(instance)
        return instance.start()

    yield start
    for instance in started:
        instance.stop()
