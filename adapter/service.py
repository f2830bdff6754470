"""Wires the service together: userli client, lookups, socketmap listener, side HTTP server;
owns start-up, readiness and the graceful shutdown."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

from adapter.config import Config
from adapter.dovecot_userdb import DovecotDictSession, Userdb
from adapter.http import Headers, HttpServer, Response, Route, json_response
from adapter.lookups import MAP_NAMES, Lookups, SocketmapSession, TcpTableSession
from adapter.metrics import CONTENT_TYPE_LATEST, Metrics
from adapter.nginx_auth import NginxAuth
from adapter.policy import PolicyDecider, PolicySession
from adapter.ratelimit import MemoryRateLimiter, RedisRateLimiter
from adapter.resilience import ResilientUserli
from adapter.sasl import Authenticator, SaslSession
from adapter.server import Limits, Listener
from adapter.userli import ENDPOINTS, Failure, Outcome, UserliClient

__all__ = ["Service"]

log = logging.getLogger("adapter.service")

READY_TIMEOUT = 2.0  # /ready: userli must answer a cheap lookup within this long
READY_MAX_AGE = 1.0  # /ready answers from a probe at most this old: a flood of probes is one call a second
SASL_IDLE_TIMEOUT = 3600.0  # smtpd keeps its auth connection open while it lives; never close it first


class Service:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics(handlers=MAP_NAMES, endpoints=ENDPOINTS)
        self.userli = UserliClient.from_config(config, self.metrics)
        self.redis = None
        if config.redis_url:
            from adapter.redis_client import connect  # redis-py only where Redis is configured

            self.redis = connect(config.redis_url)
        self.resilient = ResilientUserli.from_config(config, self.userli, self.metrics, self.redis)
        lookups = Lookups(self.resilient, self.metrics)
        self.socketmap = Listener(
            "socketmap",
            config.socketmap_address,
            lambda: SocketmapSession(lookups),
            Limits(max_connections=config.max_connections, idle_timeout=config.idle_timeout),
            self.metrics.listener_hooks("socketmap"),
            socket_mode=config.socketmap_socket_mode,
        )
        self.tcp_tables = [
            Listener(
                "tcp_table",
                address,
                lambda map_name=map_name: TcpTableSession(lookups, map_name),
                Limits(max_connections=config.max_connections, idle_timeout=config.idle_timeout),
                self.metrics.listener_hooks("tcp_table"),
                socket_mode=config.socketmap_socket_mode,
            )
            for map_name, address in config.tcp_table_addresses
        ]
        self.dovecot_dict = self._dovecot_dict_listener(config) if config.dovecot_dict_address is not None else None
        self.policy = self._policy_listener(config) if config.policy_address is not None else None
        self.sasl = self._sasl_listener(config) if config.sasl_address is not None else None
        routes: dict[str, Route] = {"/metrics": self._metrics, "/health": self._health, "/ready": self._ready}
        if config.nginx_auth_secret:
            routes["/auth/nginx"] = NginxAuth(config, self.userli, self.metrics)
        self.http = HttpServer(config.metrics_address, routes)
        self.stopping = False
        self._probe: asyncio.Task[Outcome] | None = None
        self._probed_at = -READY_MAX_AGE

    async def start(self) -> None:
        try:
            for variable, server in self._servers():
                try:
                    await server.start()
                except OSError as exc:
                    raise OSError(f"{variable}={server.address}: {exc.strerror or exc}") from exc
        except BaseException:
            await self.stop()
            raise
        self.metrics.gc_pauses.watch()
        log.info("started", extra=self.config.summary())

    async def stop(self) -> None:
        """Stop accepting, let in-flight lookups finish (bounded), close everything."""
        if self.stopping:
            return
        self.stopping = True
        log.info("shutting down", extra={"connections": self.socketmap.connection_count})
        await asyncio.gather(*(listener.close(self.config.shutdown_timeout) for listener in self._listeners()))
        await self.http.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.userli.aclose()
        self.metrics.gc_pauses.unwatch()
        log.info("stopped")

    async def run(self) -> None:
        """Start, serve until SIGTERM or SIGINT, then drain and stop."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await self.start()
        # What exists now lives as long as the process (modules, configuration, the service):
        # out of the collector's way, a full collection no longer walks it, which cut the
        # userli-bound p99 at C=50 from 37 to 27 ms (bench/README).
        gc.freeze()
        await stop.wait()
        await self.stop()

    def _dovecot_dict_listener(self, config: Config) -> Listener:
        assert config.dovecot_dict_address is not None
        userdb = Userdb(config, self.userli)
        return Listener(
            "dovecot_dict",
            config.dovecot_dict_address,
            lambda: DovecotDictSession(userdb),
            Limits(max_connections=config.max_connections, idle_timeout=config.idle_timeout),
            self.metrics.listener_hooks("dovecot_dict"),
            socket_mode=config.dovecot_dict_socket_mode,
        )

    def _policy_listener(self, config: Config) -> Listener:
        assert config.policy_address is not None
        limiter = RedisRateLimiter(self.redis) if self.redis is not None else MemoryRateLimiter()
        decider = PolicyDecider(self.userli, limiter, self.metrics, config)
        return Listener(
            "policy",
            config.policy_address,
            lambda: PolicySession(decider),
            Limits(max_connections=config.max_connections, idle_timeout=config.policy_idle_timeout),
            self.metrics.listener_hooks("policy"),
            socket_mode=config.policy_socket_mode,
        )

    def _sasl_listener(self, config: Config) -> Listener:
        assert config.sasl_address is not None
        authenticator = Authenticator(self.userli, self.metrics, config.sasl_timeout, config.sasl_failure_delay)
        return Listener(
            "sasl",
            config.sasl_address,
            lambda: SaslSession(authenticator),
            # Postfix keeps one auth connection per smtpd process for the process's lifetime.
            Limits(max_connections=config.max_connections, idle_timeout=SASL_IDLE_TIMEOUT),
            self.metrics.listener_hooks("sasl"),
            socket_mode=config.sasl_socket_mode,
            socket_owner=config.sasl_socket_owner,
            socket_group=config.sasl_socket_group,
        )

    def _listeners(self) -> list[Listener]:
        return [server for _, server in self._servers() if isinstance(server, Listener)]

    def _servers(self) -> list[tuple[str, Listener | HttpServer]]:
        """Everything that listens, with the variable that configures it (for start-up errors)."""
        servers: list[tuple[str, Listener | HttpServer]] = [("SOCKETMAP_LISTEN_ADDR", self.socketmap)]
        if self.policy is not None:
            servers.append(("POLICY_LISTEN_ADDR", self.policy))
        if self.sasl is not None:
            servers.append(("SASL_LISTEN_ADDR", self.sasl))
        servers += [("TCP_TABLE_LISTEN_ADDRS", listener) for listener in self.tcp_tables]
        if self.dovecot_dict is not None:
            servers.append(("DOVECOT_DICT_LISTEN_ADDR", self.dovecot_dict))
        return [*servers, ("METRICS_LISTEN_ADDR", self.http)]

    # --- side HTTP routes ------------------------------------------------------------------------

    async def _metrics(self, headers: Headers) -> Response:
        return Response(200, CONTENT_TYPE_LATEST, self.metrics.exposition())

    async def _health(self, headers: Headers) -> Response:
        return json_response(200, {"status": "ok"})

    async def _probe_userli(self) -> Outcome:
        """userli's real state (past the breaker and the cache), probed at most once a second
        whatever the number of /ready requests; concurrent requests share one probe."""
        loop = asyncio.get_running_loop()
        probe = self._probe
        if probe is None or (probe.done() and loop.time() - self._probed_at >= READY_MAX_AGE):
            self._probed_at = loop.time()
            probe = self._probe = loop.create_task(self.userli.ready(READY_TIMEOUT))
        return await asyncio.shield(probe)

    async def _ready(self, headers: Headers) -> Response:
        if self.stopping:
            self.metrics.health_check_status.set(0)
            return json_response(503, {"status": "unavailable", "error": "shutting down"})
        outcome = await self._probe_userli()
        if isinstance(outcome, Failure):
            self.metrics.health_check_status.set(0)
            if outcome.transient and await self.resilient.can_serve_stale():
                return json_response(
                    200, {"status": "degraded", "error": outcome.reason, "detail": "answering from the lookup cache"}
                )
            body = {"status": "unavailable", "error": outcome.reason}
            return json_response(503, {**body, "hint": outcome.hint} if outcome.hint else body)
        self.metrics.health_check_status.set(1)
        if self.userli.config_error:  # lookups work; SMTP AUTH or quotas do not (token, scope, route)
            return json_response(200, {"status": "degraded", "error": self.userli.config_error})
        return json_response(200, {"status": "ready"})
