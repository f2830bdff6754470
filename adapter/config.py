"""The service configuration: read once from the environment, validated, then passed down.

Every problem raises ``ConfigError`` whose message starts with the variable's name, so start-up
can stop with one line an operator can act on.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from adapter.tls import TlsConfigError, TlsFiles, client_context

__all__ = [
    "VARIABLES",
    "Config",
    "ConfigError",
    "ListenAddress",
    "Variable",
    "markdown_table",
    "parse_duration",
    "parse_listen_address",
]

# Postfix gives a socketmap server 100 s per request, and a lookup with a recipient delimiter may
# make two userli calls in a row: both must fit, with room to spare.
MAX_USERLI_TIMEOUT = 45.0
# Postfix keeps a policy connection idle for up to smtpd_policy_service_max_idle (300 s) and
# expects the server not to close it first.
MIN_POLICY_IDLE_TIMEOUT = 300.0
RATE_LIMIT_ACTIONS = ("REJECT", "DEFER", "DEFER_IF_PERMIT")  # or a 4NN/5NN code
# Postfix waits 10 s for each answer on the auth socket: the userli call and the failure delay
# together must stay well inside that.
POSTFIX_AUTH_TIMEOUT = 10.0
RATE_LIMIT_COUNTS = ("messages", "recipients")
RATE_LIMIT_SENDERS = ("all", "authenticated")
LOG_LEVELS = ("debug", "info", "warning", "error")
# The Go adapter's zap levels, so that a Go environment starts unchanged.
LOG_LEVEL_ALIASES = {"warn": "warning", "dpanic": "error", "panic": "error", "fatal": "error"}
OFF = "off"  # a listener variable set to this turns the listener off
NGINX_PROTOCOLS = ("smtp", "imap", "pop3")
TCP_TABLE_MAPS = ("alias", "domain", "mailbox", "senders")  # userli.MAPS (config cannot import userli)
LOG_FORMATS = ("json", "text")


@dataclass(frozen=True, slots=True)
class Variable:
    """One row of the configuration's documentation: README's table and ``--help`` are built
    from ``VARIABLES``, and ``Config.from_env`` takes its defaults from it, so they cannot drift."""

    names: tuple[str, ...]
    default: str | None  # what an unset variable means, as the reader parses it; None: unset
    meaning: str  # Markdown, as in the README
    shown: str | None = None  # the default column when it is not just `default`

    @property
    def markdown_default(self) -> str:
        return self.shown if self.shown is not None else f"`{self.default}`"

    @property
    def plain_default(self) -> str:
        return _plain(self.markdown_default)

    @property
    def plain_meaning(self) -> str:
        return _plain(self.meaning)

    def markdown_row(self) -> str:
        names = " / ".join(f"`{name}`" for name in self.names)
        return f"| {names} | {self.markdown_default} | {self.meaning} |"


def _plain(markdown: str) -> str:
    """Markdown to terminal text: no backticks, links as their text."""
    return re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", markdown).replace("`", "")


VARIABLES = (
    Variable(("USERLI_TOKEN",), None, "userli API token, sent as `Authorization: Bearer …`", shown="required"),
    Variable(
        ("USERLI_TOKEN_FILE",),
        None,
        "read the token from this file instead (Docker/Kubernetes secrets); set only one of the two",
        shown="unset",
    ),
    Variable(("USERLI_BASE_URL",), "http://localhost:8000", "userli base URL; a path prefix is allowed"),
    Variable(
        ("USERLI_TIMEOUT",),
        "5s",
        "deadline for one userli call (at most 45 s: two calls must fit in Postfix's 100 s)",
    ),
    Variable(
        ("USERLI_KEEPALIVE",),
        "4s",
        "how long an idle connection to userli is kept for the next call; `0`: a fresh connection for every "
        "call (see [Connection handling](#connection-handling))",
    ),
    Variable(
        ("USERLI_CA_FILE",),
        None,
        "PEM file of the CAs to trust for an `https` userli, instead of the built-in list (for a private CA);"
        " OpenSSL's `SSL_CERT_FILE` and `SSL_CERT_DIR` are read when it is unset",
        shown="unset",
    ),
    Variable(
        ("USERLI_CLIENT_CERT", "USERLI_CLIENT_KEY"),
        None,
        "a client certificate (PEM, with its key, or the key in a file of its own) for userli behind mutual TLS",
        shown="unset",
    ),
    Variable(
        ("POSTFIX_RECIPIENT_DELIMITER",),
        None,
        "like Postfix's `recipient_delimiter`: a set of characters, e.g. `+` or `+-`",
        shown="empty",
    ),
    Variable(
        ("SOCKETMAP_LISTEN_ADDR",),
        ":10001",
        "`host:port`, `:port` (all interfaces), `[::1]:port`, or a UNIX socket: a path starting with `/` or "
        "ending in `.sock`",
    ),
    Variable(
        ("SOCKETMAP_SOCKET_MODE",),
        "0666",
        "permissions of the UNIX socket; a stale socket file is removed at start, the socket is removed at exit",
    ),
    Variable(
        ("TCP_TABLE_LISTEN_ADDRS",),
        None,
        "tcp_table(5) listeners, one per map (the protocol names no map), e.g. "
        "`alias=:10011,mailbox=127.0.0.1:10012`; Postfix: `tcp:127.0.0.1:10011`",
        shown="empty (off)",
    ),
    Variable(("METRICS_LISTEN_ADDR",), ":10002", "side HTTP server for `/metrics`, `/health`, `/ready`"),
    Variable(("MAX_CONNECTIONS",), "500", "socketmap client connections served at once"),
    Variable(
        ("IDLE_TIMEOUT",),
        "60s",
        "close a client connection idle this long (Postfix itself closes idle ones after 10 s)",
    ),
    Variable(("SHUTDOWN_TIMEOUT",), "10s", "on SIGTERM/SIGINT, how long lookups in flight may take to finish"),
    Variable(
        ("LOOKUP_CACHE_TTL",),
        "300s",
        "how long a positive answer (`OK …`) is served without asking userli; `0` disables",
    ),
    Variable(
        ("LOOKUP_NEGATIVE_TTL",),
        "0",
        "how long a `NOTFOUND` is cached; off by default so new accounts work at once",
        shown="`0` (off)",
    ),
    Variable(
        ("LOOKUP_STALE_TTL",),
        "24h",
        "while userli fails, answer with the last positive answer if it is younger than this; `0` disables",
    ),
    Variable(
        ("LOOKUP_CACHE_SIZE",),
        "100000",
        "entries of the in-process cache: that many of the most recently used are always kept, and a flood of"
        " new keys holds at most twice as many before the older half is dropped",
    ),
    Variable(
        ("REDIS_URL",),
        None,
        "e.g. `redis://redis:6379/0` (`rediss://`, `unix://` too): share the cache between replicas",
        shown="unset",
    ),
    Variable(("USERLI_BREAKER_THRESHOLD",), "20", "consecutive userli failures that open the circuit breaker"),
    Variable(
        ("USERLI_BREAKER_COOLDOWN",),
        "5s",
        "how long the open breaker answers without calling userli before one probe goes through",
    ),
    Variable(
        ("POLICY_LISTEN_ADDR",),
        ":10003",
        "the policy server, like `SOCKETMAP_LISTEN_ADDR`; empty means the default (as in the Go adapter), "
        "`off` turns it off",
    ),
    Variable(("POLICY_SOCKET_MODE",), "0666", "permissions of the policy server's UNIX socket"),
    Variable(
        ("POLICY_IDLE_TIMEOUT",),
        "330s",
        "close an idle policy connection after this long; at least 300 s, since Postfix keeps them for 300 s",
    ),
    Variable(("QUOTA_CACHE_TTL",), "60s", "how long a user's quota from userli is reused; `0` asks every time"),
    Variable(
        ("RATE_LIMIT_COUNT",),
        "messages",
        "count `messages`, or `recipients` (one message to 500 recipients counts 500)",
    ),
    Variable(
        ("RATE_LIMIT_SENDERS",),
        "all",
        "`all`: the SASL login, else the envelope sender; `authenticated`: only messages with a SASL login "
        "count (inbound mail can forge any sender)",
    ),
    Variable(
        ("RATE_LIMIT_ACTION",),
        "REJECT",
        "what an over-quota message gets: `REJECT`, `DEFER`, `DEFER_IF_PERMIT`, or a `4NN`/`5NN` code",
    ),
    Variable(("RATE_LIMIT_MESSAGE",), "Rate limit exceeded, please try again later", "the text sent with that action"),
    Variable(
        ("SASL_LISTEN_ADDR",),
        None,
        "the SASL server (Dovecot auth protocol), like `SOCKETMAP_LISTEN_ADDR`, e.g. `:10004` or "
        "`/var/spool/postfix/private/userli-auth`; empty or `off`: off",
        shown="empty (off)",
    ),
    Variable(
        ("SASL_SOCKET_MODE",),
        "0666",
        "permissions of the SASL UNIX socket",
        shown="`0666`; `0660` with an owner or group",
    ),
    Variable(
        ("SASL_SOCKET_OWNER", "SASL_SOCKET_GROUP"),
        None,
        "owner and group (names or numbers) of the SASL UNIX socket, e.g. `postfix`",
        shown="unset",
    ),
    Variable(
        ("SASL_TIMEOUT",),
        "5s",
        "deadline for userli's answer to a login, whatever `USERLI_TIMEOUT` is (Postfix waits 10 s in all)",
    ),
    Variable(
        ("SASL_FAILURE_DELAY",),
        "2s",
        "hold back the answer to a failed login this long, on that connection only; `0` disables",
    ),
    Variable(
        ("DOVECOT_DICT_LISTEN_ADDR",),
        None,
        "Dovecot's userdb through its dict proxy (`userdb { driver = dict }`), e.g. "
        "`/run/userli-postfix-adapter/dict.sock`; the token needs the `dovecot` scope too",
        shown="empty (off)",
    ),
    Variable(("DOVECOT_DICT_SOCKET_MODE",), "0666", "permissions of the dict UNIX socket"),
    Variable(
        ("DOVECOT_HOME_TEMPLATE",),
        "/var/vmail/%d/%n",
        "the userdb's `home`: `%u` the user, `%n` its local part, `%d` its domain; empty: none",
    ),
    Variable(
        ("DOVECOT_MAIL_TEMPLATE",),
        None,
        "the userdb's `mail` (e.g. `maildir:~/Maildir`), same `%` codes; unset: Dovecot's `mail_location`",
        shown="unset",
    ),
    Variable(
        ("NGINX_AUTH_SECRET",),
        None,
        "turns on nginx mail's `auth_http` at `/auth/nginx` on the side HTTP server: the value nginx "
        "must send in the `X-Auth-Secret` header (`auth_http_header`)",
        shown="unset (off)",
    ),
    Variable(
        ("NGINX_AUTH_BACKENDS",),
        None,
        "where nginx proxies a logged-in client, per protocol: `smtp=10.0.0.5:25,imap=10.0.0.6:143,pop3=...` "
        "(IP addresses, as nginx wants them)",
        shown="unset",
    ),
    Variable(
        ("NGINX_AUTH_WAIT",),
        "3s",
        "`Auth-Wait` after a wrong password: nginx lets the client try again after this long (not after "
        "10 attempts); `0`: close at once",
    ),
    Variable(
        ("LOG_LEVEL",),
        "info",
        "`debug`, `info`, `warning` (or `warn`), `error`; the Go adapter's `dpanic`, `panic` and `fatal` mean `error`",
    ),
    Variable(("LOG_FORMAT",), "json", "`json` (one object per line) or `text`; logs go to stderr"),
)
DEFAULTS = {name: variable.default for variable in VARIABLES for name in variable.names}


def markdown_table() -> str:
    """The README's configuration table."""
    return "\n".join(["| variable | default | meaning |", "|---|---|---|", *(v.markdown_row() for v in VARIABLES)])


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the variable."""


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """A TCP ``host``/``port`` (host None = every interface) or a UNIX socket ``path``."""

    host: str | None = None
    port: int | None = None
    path: str | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return self.path
        host = self.host or ""
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Config:
    userli_token: str = field(repr=False)  # never printed, logged or put in a reply
    userli_base_url: str = "http://localhost:8000"
    userli_timeout: float = 5.0
    userli_keepalive: float = 4.0  # 0: a fresh connection for every userli call
    userli_tls: TlsFiles = field(default_factory=TlsFiles)
    recipient_delimiter: str = ""
    socketmap_address: ListenAddress = ListenAddress(port=10001)
    socketmap_socket_mode: int = 0o666
    metrics_address: ListenAddress = ListenAddress(port=10002)
    max_connections: int = 500
    idle_timeout: float = 60.0
    shutdown_timeout: float = 10.0
    cache_ttl: float = 300.0  # 0: no caching of positive answers
    negative_ttl: float = 0.0  # 0: NOTFOUND is not cached
    stale_ttl: float = 86_400.0  # 0: never answer from a stale entry
    cache_size: int = 100_000
    redis_url: str = field(default="", repr=False)  # may carry a password
    breaker_threshold: int = 20
    breaker_cooldown: float = 5.0
    policy_address: ListenAddress | None = ListenAddress(port=10003)  # None: no policy server
    policy_socket_mode: int = 0o666
    policy_idle_timeout: float = 330.0
    quota_cache_ttl: float = 60.0
    rate_limit_count: str = "messages"
    rate_limit_senders: str = "all"  # "authenticated": only messages with a SASL login count
    rate_limit_action: str = "REJECT"
    rate_limit_message: str = "Rate limit exceeded, please try again later"
    sasl_address: ListenAddress | None = None  # None: no SASL server
    tcp_table_addresses: tuple[tuple[str, ListenAddress], ...] = ()  # (map, address) per listener
    dovecot_dict_address: ListenAddress | None = None  # None: no dict server
    dovecot_dict_socket_mode: int = 0o666
    dovecot_home_template: str = "/var/vmail/%d/%n"
    dovecot_mail_template: str = ""
    nginx_auth_secret: str = field(default="", repr=False)  # empty: no /auth/nginx
    nginx_auth_backends: tuple[tuple[str, str, int], ...] = ()  # (protocol, IP address, port)
    nginx_auth_wait: float = 3.0
    sasl_socket_mode: int = 0o666  # 0o660 with an owner or group (from_env)
    sasl_socket_owner: int | None = None  # uid for the UNIX socket
    sasl_socket_group: int | None = None  # gid for the UNIX socket
    sasl_timeout: float = 5.0
    sasl_failure_delay: float = 2.0
    log_level: str = "info"
    log_format: str = "json"
    token_source: str = "USERLI_TOKEN"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        env = os.environ if env is None else env
        reader = _Reader(env)
        return cls(
            userli_token=_token(env),
            token_source="USERLI_TOKEN_FILE" if env.get("USERLI_TOKEN_FILE") else "USERLI_TOKEN",
            userli_base_url=reader.url("USERLI_BASE_URL"),
            userli_timeout=reader.duration("USERLI_TIMEOUT", maximum=MAX_USERLI_TIMEOUT),
            # Under Apache's 5 s keep-alive, so a request rarely meets a connection being closed.
            userli_keepalive=reader.duration("USERLI_KEEPALIVE", maximum=60, allow_zero=True),
            userli_tls=reader.tls_files(),
            recipient_delimiter=reader.delimiter("POSTFIX_RECIPIENT_DELIMITER"),
            socketmap_address=reader.address("SOCKETMAP_LISTEN_ADDR"),
            socketmap_socket_mode=reader.mode("SOCKETMAP_SOCKET_MODE"),
            metrics_address=reader.address("METRICS_LISTEN_ADDR"),
            max_connections=reader.integer("MAX_CONNECTIONS", minimum=1, maximum=100_000),
            idle_timeout=reader.duration("IDLE_TIMEOUT"),
            shutdown_timeout=reader.duration("SHUTDOWN_TIMEOUT", maximum=3600),
            cache_ttl=reader.duration("LOOKUP_CACHE_TTL", allow_zero=True),
            negative_ttl=reader.duration("LOOKUP_NEGATIVE_TTL", allow_zero=True),
            stale_ttl=reader.duration("LOOKUP_STALE_TTL", maximum=30 * 86_400, allow_zero=True),
            cache_size=reader.integer("LOOKUP_CACHE_SIZE", minimum=1, maximum=100_000_000),
            redis_url=reader.redis_url("REDIS_URL"),
            breaker_threshold=reader.integer("USERLI_BREAKER_THRESHOLD", minimum=1, maximum=1_000_000),
            breaker_cooldown=reader.duration("USERLI_BREAKER_COOLDOWN", maximum=3600),
            # Empty means the default, as in the Go adapter; "off" turns the policy server off.
            policy_address=reader.optional_address("POLICY_LISTEN_ADDR", empty_is_default=True),
            policy_socket_mode=reader.mode("POLICY_SOCKET_MODE"),
            policy_idle_timeout=reader.duration("POLICY_IDLE_TIMEOUT", minimum=MIN_POLICY_IDLE_TIMEOUT),
            quota_cache_ttl=reader.duration("QUOTA_CACHE_TTL", allow_zero=True),
            rate_limit_count=reader.choice("RATE_LIMIT_COUNT", RATE_LIMIT_COUNTS),
            rate_limit_senders=reader.choice("RATE_LIMIT_SENDERS", RATE_LIMIT_SENDERS),
            rate_limit_action=reader.rate_limit_action("RATE_LIMIT_ACTION"),
            rate_limit_message=reader.text("RATE_LIMIT_MESSAGE"),
            sasl_address=reader.optional_address("SASL_LISTEN_ADDR"),
            tcp_table_addresses=reader.tcp_tables("TCP_TABLE_LISTEN_ADDRS"),
            dovecot_dict_address=reader.optional_address("DOVECOT_DICT_LISTEN_ADDR"),
            dovecot_dict_socket_mode=reader.mode("DOVECOT_DICT_SOCKET_MODE"),
            dovecot_home_template=reader.text("DOVECOT_HOME_TEMPLATE"),
            dovecot_mail_template=reader.text("DOVECOT_MAIL_TEMPLATE"),
            **reader.nginx_auth(),
            **reader.sasl_socket(),
            **reader.sasl_timing(),
            log_level=reader.choice("LOG_LEVEL", LOG_LEVELS, aliases=LOG_LEVEL_ALIASES),
            log_format=reader.choice("LOG_FORMAT", LOG_FORMATS),
        )

    def listen_addresses(self) -> list[tuple[str, ListenAddress]]:
        """Every address the service listens on, with the variable that sets it."""
        addresses = [("SOCKETMAP_LISTEN_ADDR", self.socketmap_address), ("METRICS_LISTEN_ADDR", self.metrics_address)]
        if self.policy_address is not None:
            addresses.append(("POLICY_LISTEN_ADDR", self.policy_address))
        if self.sasl_address is not None:
            addresses.append(("SASL_LISTEN_ADDR", self.sasl_address))
        addresses += [("TCP_TABLE_LISTEN_ADDRS", address) for _, address in self.tcp_table_addresses]
        if self.dovecot_dict_address is not None:
            addresses.append(("DOVECOT_DICT_LISTEN_ADDR", self.dovecot_dict_address))
        return addresses

    def summary(self) -> dict[str, object]:
        """Everything worth logging at start-up; never the token itself."""
        return {
            "userli_base_url": _redacted_url(self.userli_base_url),
            "userli_timeout": self.userli_timeout,
            "userli_keepalive": self.userli_keepalive,
            "userli_ca_file": self.userli_tls.ca_file or self.userli_tls.ca_dir or "default",
            "userli_client_cert": self.userli_tls.client_cert or "none",
            "token_source": self.token_source,
            "recipient_delimiter": self.recipient_delimiter,
            "socketmap_listen_addr": str(self.socketmap_address),
            "metrics_listen_addr": str(self.metrics_address),
            "max_connections": self.max_connections,
            "idle_timeout": self.idle_timeout,
            "shutdown_timeout": self.shutdown_timeout,
            "lookup_cache_ttl": self.cache_ttl,
            "lookup_negative_ttl": self.negative_ttl,
            "lookup_stale_ttl": self.stale_ttl,
            "lookup_cache_size": self.cache_size,
            "redis": _redacted_url(self.redis_url) if self.redis_url else "off",
            "userli_breaker_threshold": self.breaker_threshold,
            "userli_breaker_cooldown": self.breaker_cooldown,
            "policy_listen_addr": str(self.policy_address) if self.policy_address else "off",
            "policy_idle_timeout": self.policy_idle_timeout,
            "quota_cache_ttl": self.quota_cache_ttl,
            "rate_limit_count": self.rate_limit_count,
            "rate_limit_senders": self.rate_limit_senders,
            "rate_limit_action": self.rate_limit_action,
            "rate_limit_store": "redis" if self.redis_url else "memory",
            "sasl_listen_addr": str(self.sasl_address) if self.sasl_address else "off",
            "dovecot_dict_listen_addr": str(self.dovecot_dict_address) if self.dovecot_dict_address else "off",
            "nginx_auth": ",".join(f"{p}={h}:{port}" for p, h, port in self.nginx_auth_backends) or "off",
            "tcp_table_listen_addrs": ",".join(f"{m}={a}" for m, a in self.tcp_table_addresses) or "off",
            "sasl_socket_mode": oct(self.sasl_socket_mode),
            "sasl_timeout": self.sasl_timeout,
            "sasl_failure_delay": self.sasl_failure_delay,
        }


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _redacted_url(url: str) -> str:
    """The URL without its password, fit for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=user + netloc).geturl()


def _token(env: Mapping[str, str]) -> str:
    token, token_file = env.get("USERLI_TOKEN", ""), env.get("USERLI_TOKEN_FILE", "")
    if token and token_file:
        raise ConfigError("USERLI_TOKEN_FILE: set either USERLI_TOKEN or USERLI_TOKEN_FILE, not both")
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"USERLI_TOKEN_FILE: cannot read {token_file}: {exc.__class__.__name__}") from None
        name = "USERLI_TOKEN_FILE"
    else:
        name = "USERLI_TOKEN"
    if not token:
        raise ConfigError(f"{name}: required, the userli API token (scope postfix)")
    if not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigError(f"{name}: the token must be printable ASCII without spaces")
    return token


# Go's time.ParseDuration units, so that a Go adapter's environment starts unchanged.
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """``500ms``, ``5s``, ``2m``, ``1h30m``, Go's ``ns``/``us``/``µs``, or plain seconds -> seconds."""
    text = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    parts = _DURATION_PART.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a duration such as 500ms, 5s, 2m or 30")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def parse_listen_address(text: str) -> ListenAddress:
    """``host:port``, ``:port``, ``[v6]:port``, or a UNIX socket: an absolute path, or any path
    ending in ``.sock`` (the Go adapter's rule; a relative one is taken from the working directory)."""
    text = text.strip()
    if text.startswith("/") or text.endswith(".sock"):
        return ListenAddress(path=text)
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(f"{text!r} is not host:port, :port, [::1]:port or a /path")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write IPv6 hosts in brackets, e.g. [::1]:10001")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 0 to 65535")
    return ListenAddress(host=host or None, port=int(port_text))


class _Reader:
    """Reads one variable at a time and turns every parse failure into a ConfigError."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def _raw(self, name: str, default: str | None = None) -> str:
        """The value, or the default: the one given, else the variable's own from ``VARIABLES``."""
        value = self._env.get(name)
        if value is None or value.strip() == "":
            return (DEFAULTS[name] or "") if default is None else default
        return value.strip()

    def duration(self, name: str, maximum: float = 86_400, allow_zero: bool = False, minimum: float = 0.0) -> float:
        try:
            seconds = parse_duration(self._raw(name))
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None
        if seconds == 0 and allow_zero:
            return 0.0
        if not (0 < seconds <= maximum and seconds >= minimum):
            lowest = "0 (off)" if allow_zero else f"at least {minimum:g}" if minimum else "more than 0"
            raise ConfigError(f"{name}: must be {lowest} and at most {maximum:g} seconds")
        return seconds

    def optional_address(self, name: str, empty_is_default: bool = False) -> ListenAddress | None:
        """Like ``address``, but ``off`` turns the listener off, and so does the empty string
        unless it means the default (as it does for the policy server in the Go adapter)."""
        raw = self._env.get(name)
        if raw is not None and raw.strip().lower() == OFF:
            return None
        empty = raw is None or raw.strip() == ""
        if empty and (not DEFAULTS[name] or (raw is not None and not empty_is_default)):
            return None
        return self.address(name)

    def sasl_socket(self) -> dict[str, int | None]:
        """Owner, group and mode of the SASL UNIX socket. Without an owner or group it is 0666, as
        in the Go adapter (Postfix's private/ directory is what guards it); with one, 0660."""
        owner, group = self.user("SASL_SOCKET_OWNER"), self.group("SASL_SOCKET_GROUP")
        default = "0666" if owner is None and group is None else "0660"
        return {
            "sasl_socket_owner": owner,
            "sasl_socket_group": group,
            "sasl_socket_mode": self.mode("SASL_SOCKET_MODE", default),
        }

    def user(self, name: str) -> int | None:
        return self._id(name, lambda n: pwd.getpwnam(n).pw_uid, "user")

    def group(self, name: str) -> int | None:
        return self._id(name, lambda n: grp.getgrnam(n).gr_gid, "group")

    def _id(self, name: str, lookup: Callable[[str], int], kind: str) -> int | None:
        raw = self._raw(name)
        if not raw:
            return None
        if raw.isdigit():
            return int(raw)
        try:
            return lookup(raw)
        except KeyError:
            raise ConfigError(f"{name}: there is no {kind} {raw!r} on this system") from None

    def sasl_timing(self) -> dict[str, float]:
        timeout = self.duration("SASL_TIMEOUT", maximum=POSTFIX_AUTH_TIMEOUT)
        delay = self.duration("SASL_FAILURE_DELAY", maximum=POSTFIX_AUTH_TIMEOUT, allow_zero=True)
        if timeout + delay >= POSTFIX_AUTH_TIMEOUT - 1:
            raise ConfigError(
                f"SASL_FAILURE_DELAY: with SASL_TIMEOUT it must stay under {POSTFIX_AUTH_TIMEOUT - 1:g} s "
                f"(Postfix gives up after {POSTFIX_AUTH_TIMEOUT:g} s)"
            )
        return {"sasl_timeout": timeout, "sasl_failure_delay": delay}

    def rate_limit_action(self, name: str) -> str:
        raw = self._raw(name).upper()
        if raw not in RATE_LIMIT_ACTIONS and not re.fullmatch(r"[45]\d\d", raw):
            raise ConfigError(f"{name}: {raw!r} is not REJECT, DEFER, DEFER_IF_PERMIT or a 4NN/5NN code")
        return raw

    def text(self, name: str, max_length: int = 200) -> str:
        raw = self._raw(name)
        if not raw.isprintable() or len(raw) > max_length:
            raise ConfigError(f"{name}: must be one line of printable text, at most {max_length} characters")
        return raw

    def redis_url(self, name: str) -> str:
        raw = self._raw(name)
        if not raw:
            return raw
        parts = urlsplit(raw)
        has_target = parts.path if parts.scheme == "unix" else parts.hostname
        if parts.scheme not in ("redis", "rediss", "unix") or not has_target:
            raise ConfigError(
                f"{name}: {_redacted_url(raw)!r} is not a URL such as redis://host:6379/0 or unix:///path"
            )
        return raw

    def integer(self, name: str, minimum: int, maximum: int) -> int:
        raw = self._raw(name)
        if not raw.isdigit() or not minimum <= int(raw) <= maximum:
            raise ConfigError(f"{name}: {raw!r} is not a whole number from {minimum} to {maximum}")
        return int(raw)

    def mode(self, name: str, default: str | None = None) -> int:
        raw = self._raw(name, default)
        if not re.fullmatch(r"0?[0-7]{3}", raw):
            raise ConfigError(f"{name}: {raw!r} is not an octal file mode such as 0666")
        return int(raw, 8)

    def nginx_auth(self) -> dict[str, Any]:
        secret, raw = self._raw("NGINX_AUTH_SECRET"), self._raw("NGINX_AUTH_BACKENDS")
        wait = self.duration("NGINX_AUTH_WAIT", maximum=60, allow_zero=True)
        if not secret:
            return {"nginx_auth_wait": wait}
        if not secret.isascii() or not secret.isprintable() or len(secret) < 16:
            raise ConfigError("NGINX_AUTH_SECRET: at least 16 printable ASCII characters")
        backends: dict[str, tuple[str, str, int]] = {}
        for item in filter(None, (part.strip() for part in raw.split(","))):
            protocol, _, target = item.partition("=")
            host, _, port = target.rpartition(":")
            if protocol not in NGINX_PROTOCOLS or not _is_ip(host.strip("[]")) or not port.isdigit():
                raise ConfigError(
                    f"NGINX_AUTH_BACKENDS: {item!r} is not PROTOCOL=IP:PORT with PROTOCOL one of "
                    f"{', '.join(NGINX_PROTOCOLS)} (nginx wants an IP address)"
                )
            backends[protocol] = (protocol, host.strip("[]"), int(port))
        if not backends:
            raise ConfigError("NGINX_AUTH_BACKENDS: required with NGINX_AUTH_SECRET, e.g. smtp=10.0.0.5:25")
        return {"nginx_auth_secret": secret, "nginx_auth_backends": tuple(backends.values()), "nginx_auth_wait": wait}

    def tcp_tables(self, name: str) -> tuple[tuple[str, ListenAddress], ...]:
        """``map=address,...``: one tcp_table listener per map."""
        raw = self._raw(name)
        if not raw or raw.lower() == OFF:
            return ()
        tables: dict[str, ListenAddress] = {}
        for item in raw.split(","):
            map_name, equals, address = (part.strip() for part in item.partition("="))
            if not equals or map_name not in TCP_TABLE_MAPS:
                raise ConfigError(
                    f"{name}: {item.strip()!r} is not MAP=ADDRESS with MAP one of {', '.join(TCP_TABLE_MAPS)}"
                )
            if map_name in tables:
                raise ConfigError(f"{name}: {map_name} is listed twice")
            try:
                tables[map_name] = parse_listen_address(address)
            except ValueError as exc:
                raise ConfigError(f"{name}: {map_name}: {exc}") from None
        return tuple(tables.items())

    def address(self, name: str) -> ListenAddress:
        try:
            return parse_listen_address(self._raw(name))
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None

    def tls_files(self) -> TlsFiles:
        ca_file = self._raw("USERLI_CA_FILE")
        openssl_file = "" if ca_file else self._raw("SSL_CERT_FILE", "")  # OpenSSL's own variables
        files = TlsFiles(
            ca_file=ca_file or openssl_file,
            ca_dir="" if ca_file else self._raw("SSL_CERT_DIR", ""),
            ca_variable="SSL_CERT_FILE" if openssl_file else "USERLI_CA_FILE",
            client_cert=self._raw("USERLI_CLIENT_CERT"),
            client_key=self._raw("USERLI_CLIENT_KEY"),
        )
        if files.client_key and not files.client_cert:
            raise ConfigError("USERLI_CLIENT_KEY: set USERLI_CLIENT_CERT too")
        if files.custom:
            try:
                client_context(files)  # load every file now: a wrong path stops the start
            except TlsConfigError as exc:
                raise ConfigError(str(exc)) from None
        return files

    def url(self, name: str) -> str:
        raw = self._raw(name).rstrip("/")
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ConfigError(f"{name}: {raw!r} is not an http(s) URL such as https://userli.example.org")
        return raw

    def delimiter(self, name: str) -> str:
        raw = self._env.get(name, "")
        if any(c.isspace() or c in "@/" or not c.isprintable() for c in raw):
            raise ConfigError(f"{name}: {raw!r} must be printable characters, without '@', '/' or spaces")
        return "".join(dict.fromkeys(raw))  # a set of characters, like Postfix's recipient_delimiter

    def choice(self, name: str, choices: tuple[str, ...], aliases: Mapping[str, str] = {}) -> str:
        raw = self._raw(name).lower()
        raw = aliases.get(raw, raw)
        if raw not in choices:
            raise ConfigError(f"{name}: {raw!r} is not one of {', '.join(choices)}")
        return raw
