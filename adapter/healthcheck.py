"""``python -m adapter.healthcheck``: exit 0 when the adapter's /health answers 200, else 1.

For container health checks: it finds the side HTTP server the way the service does (from
METRICS_LISTEN_ADDR), so no curl is needed in the image and no port is written twice.
"""

from __future__ import annotations

import http.client
import os
import socket
import sys

from adapter.config import ConfigError, parse_listen_address

__all__ = ["check"]

TIMEOUT = 3.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=TIMEOUT)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(self._path)


def check(listen_addr: str) -> bool:
    address = parse_listen_address(listen_addr)
    if address.path is not None:
        connection: http.client.HTTPConnection = _UnixConnection(address.path)
    else:
        host = address.host if address.host not in (None, "0.0.0.0", "::") else "127.0.0.1"
        connection = http.client.HTTPConnection(host, address.port, timeout=TIMEOUT)
    try:
        connection.request("GET", "/health")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def main() -> int:
    try:
        healthy = check(os.environ.get("METRICS_LISTEN_ADDR", "").strip() or ":10002")
    except (ValueError, ConfigError) as exc:
        print(f"healthcheck: METRICS_LISTEN_ADDR: {exc}", file=sys.stderr)
        return 1
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
