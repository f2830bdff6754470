"""Postfix's own client: ``postmap -q KEY socketmap:...`` against the running adapter.

postmap exits 0 and prints the value when found; exits 1 with empty stderr for NOTFOUND; exits 1
with a ``socketmap server`` warning on stderr for TEMP/PERM. Those are told apart by stderr.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import RunningService, StartAdapter, UserliStub

from adapter.config import parse_listen_address

pytestmark = pytest.mark.postfix


@pytest.fixture(scope="module")
def postmap() -> str:
    binary = shutil.which("postmap") or ("/usr/sbin/postmap" if os.path.exists("/usr/sbin/postmap") else None)
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("postmap is missing in CI: .ci/run must install the postfix package")
        pytest.skip("Postfix is not installed (apt-get install postfix)")
    return binary


@pytest.fixture
def config_dir(tmp_path: Path) -> str:
    main_cf = tmp_path / "main.cf"
    main_cf.write_text("")  # postmap only needs a readable config directory
    # Postfix re-reads a main.cf modified in the last seconds (300 ms at a time) until it is
    # sure nobody is still writing it: date it back so every query starts at once.
    os.utime(main_cf, (0, 0))
    return str(tmp_path)


class Postmap:
    def __init__(self, binary: str, config_dir: str, endpoint: str) -> None:
        self.binary, self.config_dir, self.endpoint = binary, config_dir, endpoint

    def query(self, map_name: str, key: str) -> subprocess.CompletedProcess[str]:
        table = f"socketmap:{self.endpoint}:{map_name}"
        return subprocess.run(
            [self.binary, "-c", self.config_dir, "-q", key, table], capture_output=True, text=True, timeout=60
        )


@pytest.fixture
def tcp(postmap: str, config_dir: str, adapter: RunningService) -> Postmap:
    return Postmap(postmap, config_dir, f"inet:127.0.0.1:{adapter.socketmap_port}")


@pytest.mark.parametrize(
    ("map_name", "key", "value"),
    [
        ("alias", "alias@example.org", "user@example.org"),
        ("alias", "team@example.org", "user@example.org,other@example.org"),
        ("alias", "Team@Example.ORG", "user@example.org,other@example.org"),  # client's letter case
        ("domain", "example.org", "1"),
        ("mailbox", "user@example.org", "1"),
        ("senders", "user@example.org", "user@example.org"),
        ("senders", "team@example.org", "user@example.org,other@example.org"),
    ],
)
def test_found(tcp: Postmap, map_name: str, key: str, value: str) -> None:
    result = tcp.query(map_name, key)
    assert (result.returncode, result.stdout, result.stderr) == (0, value + "\n", "")


@pytest.mark.parametrize(
    ("map_name", "key"),
    [
        ("alias", "nobody@example.org"),
        ("alias", "example.org"),  # bare domain: Postfix's virtual alias domain check
        ("domain", "example.net"),
        ("mailbox", "ghost@example.org"),
        ("senders", "ghost@example.org"),
        ("mailbox", "user@[192.0.2.1]"),  # answered locally
    ],
)
def test_not_found(tcp: Postmap, map_name: str, key: str) -> None:
    result = tcp.query(map_name, key)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", "")


def test_userli_down_is_an_error_not_not_found(tcp: Postmap, userli: UserliStub) -> None:
    assert tcp.query("mailbox", "user@example.org").returncode == 0
    userli.stop()
    result = tcp.query("mailbox", "other@example.org")  # not cached: only userli could answer
    assert result.returncode != 0
    assert "socketmap server temporary error: userli unreachable" in result.stderr


def test_userli_error_status_is_an_error(tcp: Postmap, userli: UserliStub) -> None:
    userli.behaviour = lambda map_name, key: (500, b'{"error":"boom"}')
    result = tcp.query("alias", "alias@example.org")
    assert result.returncode != 0
    assert "socketmap server temporary error: userli status 500" in result.stderr


def test_unknown_map_is_a_permanent_error(tcp: Postmap) -> None:
    result = tcp.query("virtual", "user@example.org")
    assert result.returncode != 0
    assert "socketmap server permanent error: unknown map name" in result.stderr


def test_adapter_down_is_an_error(postmap: str, config_dir: str, start_adapter: StartAdapter) -> None:
    running = start_adapter()
    endpoint = f"inet:127.0.0.1:{running.socketmap_port}"
    running.stop()
    result = Postmap(postmap, config_dir, endpoint).query("mailbox", "user@example.org")
    assert result.returncode != 0
    assert "Connection refused" in result.stderr


def test_recipient_delimiter(postmap: str, config_dir: str, start_adapter: StartAdapter) -> None:
    running = start_adapter(recipient_delimiter="+")
    pm = Postmap(postmap, config_dir, f"inet:127.0.0.1:{running.socketmap_port}")
    result = pm.query("alias", "alias+newsletter@example.org")
    assert (result.returncode, result.stdout) == (0, "user@example.org\n")
    assert pm.query("mailbox", "user+tag@example.org").stdout == "1\n"


@pytest.fixture
def unix_adapter(start_adapter: StartAdapter, tmp_path: Path) -> str:
    path = str(tmp_path / "adapter.sock")
    start_adapter(socketmap_address=parse_listen_address(path))
    return path


def test_unix_socket(postmap: str, config_dir: str, unix_adapter: str) -> None:
    pm = Postmap(postmap, config_dir, f"unix:{unix_adapter}")
    assert pm.query("domain", "example.org").stdout == "1\n"
    assert pm.query("mailbox", "ghost@example.org").returncode == 1
