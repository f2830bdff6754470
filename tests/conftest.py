from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers import RunningService, UserliStub, config_for


@pytest.fixture
def userli() -> Iterator[UserliStub]:
    stub = UserliStub().start()
    yield stub
    stub.stop()


@pytest.fixture
def adapter(userli: UserliStub) -> Iterator[RunningService]:
    running = RunningService(config_for(userli.url))
    yield running
    running.stop()
