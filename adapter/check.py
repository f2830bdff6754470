"""``userli-postfix-adapter check``: the configuration tested against the real world.

One line per item, and exit 0 only when all pass, so it serves as an init container and in the
CI of a mail stack: userli reachable (TLS included) with the token accepted and its postfix
scope, the routes the configured features need (userli new enough), Redis, and the listeners.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import dataclass

from adapter.config import Config, ListenAddress
from adapter.lookups import MAP_NAMES
from adapter.metrics import Metrics
from adapter.userli import ENDPOINTS, READY_PROBE_DOMAIN, Failure, Refused, UserliClient

__all__ = ["Check", "run_checks"]

PROBE_ADDRESS = f"postmaster@{READY_PROBE_DOMAIN}"  # no such user: userli answers without side effects


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


async def run_checks(config: Config) -> list[Check]:
    client = UserliClient.from_config(config, Metrics(handlers=MAP_NAMES, endpoints=ENDPOINTS))
    try:
        checks = [await _userli(config, client)]
        if checks[0].ok:
            if config.policy_address is not None:
                checks.append(await _quota_route(client))
            if config.sasl_address is not None:
                checks.append(await _auth_route(config, client))
            if config.dovecot_dict_address is not None:
                checks.append(await _dovecot_route(client))
    finally:
        await client.aclose()
    if config.redis_url:
        checks.append(await _redis(config))
    for variable, address in config.listen_addresses():
        checks.append(_bindable(variable, address))
    return checks


async def _userli(config: Config, client: UserliClient) -> Check:
    """The readiness probe's lookup: reachable, TLS, token and postfix scope in one call."""
    started = time.perf_counter()
    outcome = await client.ready(config.userli_timeout)
    took = f"{(time.perf_counter() - started) * 1000:.0f} ms"
    if isinstance(outcome, Failure):
        return _failed("userli", outcome)
    return Check("userli", True, f"{config.userli_base_url} answered in {took}; the token has the postfix scope")


async def _quota_route(client: UserliClient) -> Check:
    name = "sending quotas (policy server)"
    outcome = await client.quota(PROBE_ADDRESS)
    if isinstance(outcome, Failure):
        return _failed(name, outcome)
    return Check(name, True, "userli's smtp_quota route answers (userli 6.2.0 or newer)")


async def _auth_route(config: Config, client: UserliClient) -> Check:
    name = "SMTP AUTH (SASL server)"
    # A login that cannot succeed: an address at a domain that cannot exist, a random password.
    outcome = await client.authenticate(PROBE_ADDRESS, os.urandom(16).hex(), config.sasl_timeout)
    if isinstance(outcome, Refused):
        return Check(name, True, "userli's auth route answers (userli 6.9.0 or newer)")
    if isinstance(outcome, Failure):
        return _failed(name, outcome)
    return Check(name, False, "userli accepted a login that cannot exist")


async def _dovecot_route(client: UserliClient) -> Check:
    name = "Dovecot userdb (dict server)"
    outcome = await client.dovecot_user(PROBE_ADDRESS)  # no such user: the route and the scope answer
    if isinstance(outcome, Failure):
        return _failed(name, outcome)
    return Check(name, True, "userli's dovecot route answers; the token has the dovecot scope")


def _failed(name: str, failure: Failure) -> Check:
    return Check(name, False, failure.reason + (f" ({failure.hint})" if failure.hint else ""))


async def _redis(config: Config) -> Check:
    from adapter.redis_client import ERRORS, connect  # redis-py only where Redis is configured

    client = connect(config.redis_url)
    try:
        await client.ping()
        return Check("Redis", True, "REDIS_URL answers PING")
    except ERRORS as exc:
        return Check("Redis", False, f"REDIS_URL: {exc.__class__.__name__}: {exc}")
    finally:
        await client.aclose()


def _bindable(variable: str, address: ListenAddress) -> Check:
    """Bind and let go at once: the address is free and ours to take (a running adapter holds it)."""
    if address.path is not None:
        return _bindable_path(variable, address.path)
    family = socket.AF_INET6 if address.host and ":" in address.host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address.host or "", address.port or 0))
    except OSError as exc:
        return Check(f"listener {variable}", False, f"cannot bind {address}: {exc.strerror or exc}")
    return Check(f"listener {variable}", True, f"{address} can be bound")


def _bindable_path(variable: str, path: str) -> Check:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe, contextlib.suppress(OSError):
        probe.connect(path)
        return Check(f"listener {variable}", False, f"{path} is in use: something answers there")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK | os.X_OK):
        return Check(f"listener {variable}", False, f"cannot create {path}: {directory} is missing or not writable")
    return Check(f"listener {variable}", True, f"{path} can be created")
