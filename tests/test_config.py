"""Configuration from the environment: defaults, parsing, and one-line errors naming the variable."""

from __future__ import annotations

import pwd
from pathlib import Path

import pytest
import trustme

from adapter.config import Config, ConfigError, ListenAddress, parse_duration, parse_listen_address


def test_defaults() -> None:
    config = Config.from_env({"USERLI_TOKEN": "abc"})
    assert config.userli_token == "abc"
    assert config.userli_base_url == "http://localhost:8000"
    assert config.userli_timeout == 5.0
    assert config.recipient_delimiter == ""
    assert config.socketmap_address == ListenAddress(port=10001)
    assert config.metrics_address == ListenAddress(port=10002)
    assert config.socketmap_socket_mode == 0o666
    assert config.max_connections == 500
    assert config.idle_timeout == 60.0
    assert (config.log_level, config.log_format) == ("info", "json")
    assert (config.cache_ttl, config.negative_ttl, config.stale_ttl) == (300.0, 0.0, 86_400.0)
    assert config.cache_size == 100_000
    assert config.redis_url == ""
    assert (config.breaker_threshold, config.breaker_cooldown) == (20, 5.0)


def test_cache_and_breaker_settings() -> None:
    config = Config.from_env(
        {
            "USERLI_TOKEN": "abc",
            "LOOKUP_CACHE_TTL": "0",
            "LOOKUP_NEGATIVE_TTL": "30s",
            "LOOKUP_STALE_TTL": "0",
            "LOOKUP_CACHE_SIZE": "5000",
            "REDIS_URL": "redis://:s3cret@redis:6379/1",
            "USERLI_BREAKER_THRESHOLD": "5",
            "USERLI_BREAKER_COOLDOWN": "500ms",
        }
    )
    assert (config.cache_ttl, config.negative_ttl, config.stale_ttl) == (0.0, 30.0, 0.0)
    assert config.cache_size == 5000
    assert config.redis_url == "redis://:s3cret@redis:6379/1"
    assert (config.breaker_threshold, config.breaker_cooldown) == (5, 0.5)
    assert "s3cret" not in repr(config)
    assert "s3cret" not in str(config.summary())
    assert config.summary()["redis"] == "redis://:***@redis:6379/1"


def test_policy_settings() -> None:
    defaults = Config.from_env({"USERLI_TOKEN": "abc"})
    assert defaults.policy_address == ListenAddress(port=10003)
    assert (defaults.policy_idle_timeout, defaults.quota_cache_ttl) == (330.0, 60.0)
    assert (defaults.rate_limit_count, defaults.rate_limit_action) == ("messages", "REJECT")
    assert defaults.rate_limit_message == "Rate limit exceeded, please try again later"
    config = Config.from_env(
        {
            "USERLI_TOKEN": "abc",
            "POLICY_LISTEN_ADDR": "/run/adapter/policy.sock",
            "POLICY_SOCKET_MODE": "0600",
            "POLICY_IDLE_TIMEOUT": "10m",
            "QUOTA_CACHE_TTL": "0",
            "RATE_LIMIT_COUNT": "recipients",
            "RATE_LIMIT_ACTION": "defer_if_permit",
            "RATE_LIMIT_MESSAGE": "Too much mail from you today",
        }
    )
    assert config.policy_address == ListenAddress(path="/run/adapter/policy.sock")
    assert (config.policy_socket_mode, config.policy_idle_timeout, config.quota_cache_ttl) == (0o600, 600.0, 0.0)
    assert (config.rate_limit_count, config.rate_limit_action) == ("recipients", "DEFER_IF_PERMIT")
    assert config.rate_limit_message == "Too much mail from you today"
    # As in the Go adapter, empty means the default; "off" turns the policy server off.
    assert Config.from_env({"USERLI_TOKEN": "abc", "POLICY_LISTEN_ADDR": ""}).policy_address == ListenAddress(
        port=10003
    )
    assert Config.from_env({"USERLI_TOKEN": "abc", "POLICY_LISTEN_ADDR": "off"}).policy_address is None
    assert Config.from_env({"USERLI_TOKEN": "abc", "POLICY_LISTEN_ADDR": " OFF "}).policy_address is None
    assert defaults.rate_limit_senders == "all"
    authenticated = Config.from_env({"USERLI_TOKEN": "abc", "RATE_LIMIT_SENDERS": "Authenticated"})
    assert authenticated.rate_limit_senders == "authenticated"


def test_sasl_settings() -> None:
    defaults = Config.from_env({"USERLI_TOKEN": "abc"})
    assert defaults.sasl_address is None
    # Without an owner or group the socket is 0666, as the Go adapter makes it, so that a Go
    # user's SASL_LISTEN_ADDR=/var/spool/postfix/private/auth keeps working for Postfix.
    assert (defaults.sasl_socket_mode, defaults.sasl_timeout, defaults.sasl_failure_delay) == (0o666, 5.0, 2.0)
    assert Config.from_env({"USERLI_TOKEN": "abc", "SASL_SOCKET_GROUP": "0"}).sasl_socket_mode == 0o660
    assert Config.from_env({"USERLI_TOKEN": "abc", "SASL_LISTEN_ADDR": "off"}).sasl_address is None
    config = Config.from_env(
        {
            "USERLI_TOKEN": "abc",
            "SASL_LISTEN_ADDR": "/var/spool/postfix/private/userli-auth",
            "SASL_SOCKET_MODE": "0600",
            "SASL_SOCKET_OWNER": "postfix",
            "SASL_SOCKET_GROUP": "0",
            "SASL_TIMEOUT": "3s",
            "SASL_FAILURE_DELAY": "0",
        }
    )
    assert config.sasl_address == ListenAddress(path="/var/spool/postfix/private/userli-auth")
    assert config.sasl_socket_owner == pwd.getpwnam("postfix").pw_uid
    assert (config.sasl_socket_group, config.sasl_socket_mode) == (0, 0o600)
    assert (config.sasl_timeout, config.sasl_failure_delay) == (3.0, 0.0)


def test_credentials_in_the_userli_url_are_not_logged() -> None:
    config = Config.from_env({"USERLI_TOKEN": "abc", "USERLI_BASE_URL": "https://user:pa55@userli.example.org"})
    assert "pa55" not in str(config.summary())


@pytest.mark.parametrize(
    ("zap", "level"), [("dpanic", "error"), ("panic", "error"), ("fatal", "error"), ("warn", "warning")]
)
def test_go_log_levels_are_accepted(zap: str, level: str) -> None:
    assert Config.from_env({"USERLI_TOKEN": "abc", "LOG_LEVEL": zap}).log_level == level


def test_everything_set() -> None:
    config = Config.from_env(
        {
            "USERLI_TOKEN": "abc",
            "USERLI_BASE_URL": "https://userli.example.org/prefix/",
            "USERLI_TIMEOUT": "1500ms",
            "POSTFIX_RECIPIENT_DELIMITER": "+-+",
            "SOCKETMAP_LISTEN_ADDR": "/run/adapter/socketmap.sock",
            "SOCKETMAP_SOCKET_MODE": "0660",
            "METRICS_LISTEN_ADDR": "[::1]:9000",
            "MAX_CONNECTIONS": "20",
            "IDLE_TIMEOUT": "2m",
            "SHUTDOWN_TIMEOUT": "30",
            "LOG_LEVEL": "WARN",
            "LOG_FORMAT": "text",
        }
    )
    assert config.userli_base_url == "https://userli.example.org/prefix"
    assert config.userli_timeout == 1.5
    assert config.recipient_delimiter == "+-"
    assert config.socketmap_address == ListenAddress(path="/run/adapter/socketmap.sock")
    assert config.socketmap_socket_mode == 0o660
    assert config.metrics_address == ListenAddress(host="::1", port=9000)
    assert config.max_connections == 20
    assert config.idle_timeout == 120.0
    assert config.shutdown_timeout == 30.0
    assert (config.log_level, config.log_format) == ("warning", "text")


def test_token_from_file(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-file\n")
    config = Config.from_env({"USERLI_TOKEN_FILE": str(secret)})
    assert config.userli_token == "from-file"
    assert config.token_source == "USERLI_TOKEN_FILE"


def test_token_never_in_repr_or_summary() -> None:
    config = Config.from_env({"USERLI_TOKEN": "sup3r-secret"})
    assert "sup3r-secret" not in repr(config)
    assert "sup3r-secret" not in str(config.summary())


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "USERLI_TOKEN"),
        ({"USERLI_TOKEN": "  "}, "USERLI_TOKEN"),
        ({"USERLI_TOKEN": "a b"}, "USERLI_TOKEN"),
        ({"USERLI_TOKEN": "a", "USERLI_TOKEN_FILE": "/x"}, "USERLI_TOKEN_FILE"),
        ({"USERLI_TOKEN_FILE": "/nonexistent/token"}, "USERLI_TOKEN_FILE"),
        ({"USERLI_TOKEN": "a", "USERLI_BASE_URL": "ftp://x"}, "USERLI_BASE_URL"),
        ({"USERLI_TOKEN": "a", "USERLI_BASE_URL": "userli:8000"}, "USERLI_BASE_URL"),
        ({"USERLI_TOKEN": "a", "USERLI_BASE_URL": "http://x/?q=1"}, "USERLI_BASE_URL"),
        ({"USERLI_TOKEN": "a", "USERLI_TIMEOUT": "5 seconds"}, "USERLI_TIMEOUT"),
        ({"USERLI_TOKEN": "a", "USERLI_TIMEOUT": "0"}, "USERLI_TIMEOUT"),
        ({"USERLI_TOKEN": "a", "USERLI_TIMEOUT": "2m"}, "USERLI_TIMEOUT"),  # too close to Postfix's 100 s
        ({"USERLI_TOKEN": "a", "POSTFIX_RECIPIENT_DELIMITER": "@"}, "POSTFIX_RECIPIENT_DELIMITER"),
        ({"USERLI_TOKEN": "a", "POSTFIX_RECIPIENT_DELIMITER": "+ "}, "POSTFIX_RECIPIENT_DELIMITER"),
        ({"USERLI_TOKEN": "a", "SOCKETMAP_LISTEN_ADDR": "10001"}, "SOCKETMAP_LISTEN_ADDR"),
        ({"USERLI_TOKEN": "a", "SOCKETMAP_LISTEN_ADDR": "::1:10001"}, "SOCKETMAP_LISTEN_ADDR"),
        ({"USERLI_TOKEN": "a", "SOCKETMAP_LISTEN_ADDR": "host:99999"}, "SOCKETMAP_LISTEN_ADDR"),
        ({"USERLI_TOKEN": "a", "SOCKETMAP_SOCKET_MODE": "rw"}, "SOCKETMAP_SOCKET_MODE"),
        ({"USERLI_TOKEN": "a", "SOCKETMAP_SOCKET_MODE": "0999"}, "SOCKETMAP_SOCKET_MODE"),
        ({"USERLI_TOKEN": "a", "METRICS_LISTEN_ADDR": "localhost"}, "METRICS_LISTEN_ADDR"),
        ({"USERLI_TOKEN": "a", "MAX_CONNECTIONS": "0"}, "MAX_CONNECTIONS"),
        ({"USERLI_TOKEN": "a", "MAX_CONNECTIONS": "lots"}, "MAX_CONNECTIONS"),
        ({"USERLI_TOKEN": "a", "IDLE_TIMEOUT": "-1s"}, "IDLE_TIMEOUT"),
        ({"USERLI_TOKEN": "a", "LOG_LEVEL": "verbose"}, "LOG_LEVEL"),
        ({"USERLI_TOKEN": "a", "LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"USERLI_TOKEN": "a", "LOOKUP_CACHE_TTL": "-5s"}, "LOOKUP_CACHE_TTL"),
        ({"USERLI_TOKEN": "a", "LOOKUP_CACHE_TTL": "forever"}, "LOOKUP_CACHE_TTL"),
        ({"USERLI_TOKEN": "a", "LOOKUP_NEGATIVE_TTL": "1 minute"}, "LOOKUP_NEGATIVE_TTL"),
        ({"USERLI_TOKEN": "a", "LOOKUP_STALE_TTL": "365d"}, "LOOKUP_STALE_TTL"),
        ({"USERLI_TOKEN": "a", "LOOKUP_CACHE_SIZE": "0"}, "LOOKUP_CACHE_SIZE"),
        ({"USERLI_TOKEN": "a", "REDIS_URL": "http://redis:6379"}, "REDIS_URL"),
        ({"USERLI_TOKEN": "a", "REDIS_URL": "redis:6379"}, "REDIS_URL"),
        ({"USERLI_TOKEN": "a", "USERLI_BREAKER_THRESHOLD": "0"}, "USERLI_BREAKER_THRESHOLD"),
        ({"USERLI_TOKEN": "a", "USERLI_BREAKER_COOLDOWN": "0"}, "USERLI_BREAKER_COOLDOWN"),
        ({"USERLI_TOKEN": "a", "POLICY_LISTEN_ADDR": "policy"}, "POLICY_LISTEN_ADDR"),
        ({"USERLI_TOKEN": "a", "POLICY_SOCKET_MODE": "777x"}, "POLICY_SOCKET_MODE"),
        ({"USERLI_TOKEN": "a", "POLICY_IDLE_TIMEOUT": "10s"}, "POLICY_IDLE_TIMEOUT"),  # Postfix keeps 300 s
        ({"USERLI_TOKEN": "a", "QUOTA_CACHE_TTL": "-1"}, "QUOTA_CACHE_TTL"),
        ({"USERLI_TOKEN": "a", "RATE_LIMIT_COUNT": "bytes"}, "RATE_LIMIT_COUNT"),
        ({"USERLI_TOKEN": "a", "RATE_LIMIT_ACTION": "DISCARD"}, "RATE_LIMIT_ACTION"),
        ({"USERLI_TOKEN": "a", "RATE_LIMIT_ACTION": "250"}, "RATE_LIMIT_ACTION"),
        ({"USERLI_TOKEN": "a", "RATE_LIMIT_MESSAGE": "two\nlines"}, "RATE_LIMIT_MESSAGE"),
        ({"USERLI_TOKEN": "a", "RATE_LIMIT_MESSAGE": "x" * 201}, "RATE_LIMIT_MESSAGE"),
        ({"USERLI_TOKEN": "a", "SASL_LISTEN_ADDR": "auth"}, "SASL_LISTEN_ADDR"),
        ({"USERLI_TOKEN": "a", "RATE_LIMIT_SENDERS": "sasl"}, "RATE_LIMIT_SENDERS"),
        ({"USERLI_TOKEN": "a", "SASL_SOCKET_OWNER": "no-such-user-here"}, "SASL_SOCKET_OWNER"),
        ({"USERLI_TOKEN": "a", "SASL_SOCKET_GROUP": "no-such-group-here"}, "SASL_SOCKET_GROUP"),
        ({"USERLI_TOKEN": "a", "SASL_TIMEOUT": "12s"}, "SASL_TIMEOUT"),  # over Postfix's 10 s
        ({"USERLI_TOKEN": "a", "SASL_TIMEOUT": "6s", "SASL_FAILURE_DELAY": "3s"}, "SASL_FAILURE_DELAY"),
    ],
)
def test_errors_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env(env)
    message = str(caught.value)
    assert message.startswith(f"{variable}: ")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("5s", 5),
        ("2m", 120),
        ("1h", 3600),
        ("1m30s", 90),
        ("30", 30),
        ("2.5", 2.5),
        # Go's time.ParseDuration units, as a Go adapter's environment may have them
        ("1500000us", 1.5),
        ("1500000µs", 1.5),
        ("2000000000ns", 2.0),
        ("1h0m0s", 3600),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "address"),
    [
        (":10001", ListenAddress(port=10001)),
        ("127.0.0.1:10001", ListenAddress(host="127.0.0.1", port=10001)),
        ("localhost:0", ListenAddress(host="localhost", port=0)),
        ("[::1]:10001", ListenAddress(host="::1", port=10001)),
        ("/var/spool/postfix/private/userli", ListenAddress(path="/var/spool/postfix/private/userli")),
        ("run/socketmap.sock", ListenAddress(path="run/socketmap.sock")),  # the Go adapter's rule
        ("adapter.sock", ListenAddress(path="adapter.sock")),
    ],
)
def test_parse_listen_address(text: str, address: ListenAddress) -> None:
    assert parse_listen_address(text) == address


def test_userli_keepalive_and_tls_files(tmp_path: Path) -> None:
    authority = trustme.CA()
    ca_file, cert_file = tmp_path / "ca.pem", tmp_path / "client.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    authority.issue_cert("adapter").private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    defaults = Config.from_env({"USERLI_TOKEN": "abc"})
    assert defaults.userli_keepalive == 4.0 and not defaults.userli_tls.custom
    config = Config.from_env(
        {
            "USERLI_TOKEN": "abc",
            "USERLI_KEEPALIVE": "0",
            "USERLI_CA_FILE": str(ca_file),
            "USERLI_CLIENT_CERT": str(cert_file),
        }
    )
    assert config.userli_keepalive == 0
    assert (config.userli_tls.ca_file, config.userli_tls.client_cert) == (str(ca_file), str(cert_file))
    standard = Config.from_env({"USERLI_TOKEN": "abc", "SSL_CERT_FILE": str(ca_file)})  # OpenSSL's own variable
    assert standard.userli_tls.ca_file == str(ca_file)
    assert str(ca_file) in str(config.summary()) and "abc" not in str(config.summary())


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"USERLI_CA_FILE": "/nonexistent/ca.pem"}, "USERLI_CA_FILE"),
        ({"SSL_CERT_FILE": "/nonexistent/ca.pem"}, "SSL_CERT_FILE"),
        ({"USERLI_CLIENT_CERT": "/nonexistent/client.pem"}, "USERLI_CLIENT_CERT"),
        ({"USERLI_CLIENT_KEY": "/x/key.pem"}, "USERLI_CLIENT_KEY"),
        ({"USERLI_KEEPALIVE": "forever"}, "USERLI_KEEPALIVE"),
    ],
)
def test_tls_and_keepalive_errors_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"USERLI_TOKEN": "abc", **env})
    assert str(caught.value).startswith(f"{variable}: ")


def test_a_ca_file_that_is_not_pem_stops_the_start(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate")
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"USERLI_TOKEN": "abc", "USERLI_CA_FILE": str(bogus)})
    assert str(caught.value).startswith("USERLI_CA_FILE: cannot load CA certificates")
