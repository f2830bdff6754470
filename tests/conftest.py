from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import RunningService, UserliStub, config_for


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
