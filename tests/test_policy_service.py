"""The policy listener on loopback: real connections, the HTTP stand-in for userli, real Redis."""

from __future__ import annotations

import logging
import socket

import pytest
from helpers import PolicyClient, RedisServer, StartAdapter, UserliStub, end_of_message, metric

REFUSED = "REJECT Rate limit exceeded, please try again later"


def test_many_requests_on_one_kept_connection(start_adapter: StartAdapter) -> None:
    adapter = start_adapter()
    with PolicyClient(adapter.policy_port) as client:
        assert client.ask(request="smtpd_access_policy", protocol_state="RCPT", sender="user@example.org") == "DUNNO"
        actions = [client.ask(**end_of_message("user@example.org")) for _ in range(5)]
        assert client.ask(**end_of_message("other@example.org")) == "DUNNO"  # unlimited
        assert client.ask(**end_of_message("stranger@example.net")) == "DUNNO"  # not a userli user
    assert actions == ["DUNNO"] * 3 + [REFUSED] * 2  # per_hour 3
    assert metric(adapter.http_url, "userli_postfix_adapter_quota_exceeded_total") == 2


def test_malformed_input_closes_only_that_connection(start_adapter: StartAdapter) -> None:
    adapter = start_adapter()
    with PolicyClient(adapter.policy_port) as good, socket.create_connection(("127.0.0.1", adapter.policy_port)) as bad:
        assert good.ask(**end_of_message("other@example.org")) == "DUNNO"
        bad.sendall(b"this is not a policy request\n")
        bad.settimeout(5)
        assert bad.recv(100) == b""
        assert good.ask(**end_of_message("other@example.org")) == "DUNNO"
    assert metric(adapter.http_url, 'userli_postfix_adapter_protocol_errors_total{listener="policy"}') == 1


def test_policy_listener_can_be_disabled(start_adapter: StartAdapter) -> None:
    adapter = start_adapter(policy_address=None)
    assert adapter.service.policy is None


def test_userli_down_fails_open(start_adapter: StartAdapter, userli: UserliStub) -> None:
    adapter = start_adapter()
    userli.stop()
    with PolicyClient(adapter.policy_port) as client:
        assert [client.ask(**end_of_message("user@example.org")) for _ in range(5)] == ["DUNNO"] * 5


def test_two_instances_share_counts_through_redis(start_adapter: StartAdapter, redis_server: RedisServer) -> None:
    first = start_adapter(redis_url=redis_server.url)
    second = start_adapter(redis_url=redis_server.url)
    with PolicyClient(first.policy_port) as a, PolicyClient(second.policy_port) as b:
        assert a.ask(**end_of_message("user@example.org")) == "DUNNO"
        assert b.ask(**end_of_message("user@example.org")) == "DUNNO"
        assert a.ask(**end_of_message("user@example.org")) == "DUNNO"
        assert b.ask(**end_of_message("user@example.org")) == REFUSED  # the 4th, counted across both


def test_counts_survive_a_restart_with_redis(start_adapter: StartAdapter, redis_server: RedisServer) -> None:
    before = start_adapter(redis_url=redis_server.url)
    with PolicyClient(before.policy_port) as client:
        assert [client.ask(**end_of_message("user@example.org")) for _ in range(3)] == ["DUNNO"] * 3
    before.stop()
    after = start_adapter(redis_url=redis_server.url)
    with PolicyClient(after.policy_port) as client:
        assert client.ask(**end_of_message("user@example.org")) == REFUSED


def test_redis_stopped_fails_open_and_is_counted(start_adapter: StartAdapter, redis_server: RedisServer) -> None:
    adapter = start_adapter(redis_url=redis_server.url)
    with PolicyClient(adapter.policy_port) as client:
        assert client.ask(**end_of_message("user@example.org")) == "DUNNO"
        redis_server.kill()
        assert [client.ask(**end_of_message("user@example.org")) for _ in range(5)] == ["DUNNO"] * 5
    errors = metric(adapter.http_url, 'userli_postfix_adapter_ratelimit_backend_errors_total{operation="check"}')
    assert errors == 5


def test_userli_without_the_quota_route_fails_open_as_an_error(
    start_adapter: StartAdapter, userli: UserliStub, caplog: pytest.LogCaptureFixture
) -> None:
    """userli older than 6.2.0 answers 404 with a routing error, not "User not found"."""
    userli.version = (6, 1, 0)
    adapter = start_adapter()
    with caplog.at_level(logging.INFO, logger="adapter"), PolicyClient(adapter.policy_port) as client:
        for _ in range(5):
            assert client.ask(**end_of_message("user@example.org")) == "DUNNO"
    assert metric(adapter.http_url, 'userli_postfix_adapter_quota_checks_total{result="error"}') == 5
    assert metric(adapter.http_url, 'userli_postfix_adapter_quota_checks_total{result="unknown_user"}') == 0
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.reason for r in errors] == ["userli has no smtp_quota route"]


def test_unknown_sender_is_userli_s_own_404(start_adapter: StartAdapter) -> None:
    adapter = start_adapter()
    with PolicyClient(adapter.policy_port) as client:
        assert client.ask(**end_of_message("stranger@example.org")) == "DUNNO"
    assert metric(adapter.http_url, 'userli_postfix_adapter_quota_checks_total{result="unknown_user"}') == 1
    assert metric(adapter.http_url, 'userli_postfix_adapter_quota_checks_total{result="error"}') == 0
