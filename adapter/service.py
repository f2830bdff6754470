"""Wires the service together: userli client, lookups, socketmap listener, side HTTP server;
owns start-up, readiness and the graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal

from adapter.config import Config
from adapter.http import HttpServer, Response, json_response
from adapter.lookups import MAP_NAMES, Lookups, SocketmapSession
from adapter.metrics import CONTENT_TYPE_LATEST, Metrics
from adapter.resilience import ResilientUserli
from adapter.server import Limits, Listener, ListenerHooks
from adapter.userli import ENDPOINTS, Failure, UserliClient

__all__ = ["Service"]

log = logging.getLogger("adapter.service")

READY_TIMEOUT = 2.0  # /ready: userli must answer a cheap lookup within this long


class Service:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics(handlers=MAP_NAMES, endpoints=ENDPOINTS)
        self.userli = UserliClient.from_config(config, self.metrics)
        self.resilient = ResilientUserli.from_config(config, self.userli, self.metrics)
        lookups = Lookups(self.resilient, self.metrics, config.recipient_delimiter)
        self.socketmap = Listener(
            "socketmap",
            config.socketmap_address,
            lambda: SocketmapSession(lookups),
            Limits(max_connections=config.max_connections, idle_timeout=config.idle_timeout),
            ListenerHooks(
                connections_changed=self.metrics.set_connections,
                pool_full=self.metrics.connection_pool_full.inc,
                framing_error=self.metrics.protocol_errors.inc,
            ),
            socket_mode=config.socketmap_socket_mode,
        )
        self.http = HttpServer(
            config.metrics_address, {"/metrics": self._metrics, "/health": self._health, "/ready": self._ready}
        )
        self.stopping = False

    async def start(self) -> None:
        try:
            for variable, server in (("SOCKETMAP_LISTEN_ADDR", self.socketmap), ("METRICS_LISTEN_ADDR", self.http)):
                try:
                    await server.start()
                except OSError as exc:
                    raise OSError(f"{variable}={server.address}: {exc.strerror or exc}") from exc
        except BaseException:
            await self.stop()
            raise
        log.info("started", extra=self.config.summary())

    async def stop(self) -> None:
        """Stop accepting, let in-flight lookups finish (bounded), close everything."""
        if self.stopping:
            return
        self.stopping = True
        log.info("shutting down", extra={"connections": self.socketmap.connection_count})
        await self.socketmap.close(self.config.shutdown_timeout)
        await self.http.close()
        await self.resilient.aclose()
        await self.userli.aclose()
        log.info("stopped")

    async def run(self) -> None:
        """Start, serve until SIGTERM or SIGINT, then drain and stop."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await self.start()
        await stop.wait()
        await self.stop()

    # --- side HTTP routes ------------------------------------------------------------------------

    async def _metrics(self) -> Response:
        return Response(200, CONTENT_TYPE_LATEST, self.metrics.exposition())

    async def _health(self) -> Response:
        return json_response(200, {"status": "ok"})

    async def _ready(self) -> Response:
        if self.stopping:
            self.metrics.health_check_status.set(0)
            return json_response(503, {"status": "unavailable", "error": "shutting down"})
        outcome = await self.userli.ready(READY_TIMEOUT)  # past the breaker: the real state of userli
        if isinstance(outcome, Failure):
            self.metrics.health_check_status.set(0)
            if outcome.transient and await self.resilient.can_serve_stale():
                return json_response(
                    200, {"status": "degraded", "error": outcome.reason, "detail": "answering from the lookup cache"}
                )
            return json_response(503, {"status": "unavailable", "error": outcome.reason})
        self.metrics.health_check_status.set(1)
        return json_response(200, {"status": "ready"})
