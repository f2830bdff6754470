"""nginx mail's ``auth_http``: logins to nginx's SMTP, IMAP and POP3 proxy checked against userli.

nginx asks ``GET /auth/nginx`` with the login in headers and reads only the reply's headers:

* a password userli accepts: ``Auth-Status: OK`` and the backend for the protocol
  (``Auth-Server``, an IP address, and ``Auth-Port``);
* a password userli refuses: ``Auth-Status: Invalid login or password`` and ``Auth-Wait``, after
  which nginx lets the client try again (not after 10 attempts: then nginx closes);
* userli failing: ``Auth-Status: Temporary server problem, try again later`` and, for SMTP,
  ``Auth-Error-Code: 451 4.3.0``, so the client retries later instead of seeing a wrong password.

The route sits on the side HTTP server, reachable over the network: every request must carry
the shared secret (``auth_http_header X-Auth-Secret ...``), or it gets a 403 and no answer about
any login. The password is never logged.
"""

from __future__ import annotations

import hmac
import logging
import time
from urllib.parse import unquote

from adapter.config import Config
from adapter.http import Headers, Response
from adapter.metrics import Metrics
from adapter.userli import Authenticated, Failure, Refused, UserliClient

__all__ = ["NginxAuth"]

log = logging.getLogger("adapter.nginx_auth")

INVALID = "Invalid login or password"
TEMPORARY = "Temporary server problem, try again later"
MAX_ATTEMPTS_WITH_WAIT = 10  # after that, nginx is told to close (no Auth-Wait)
MAX_FIELD = 512  # bytes of a login or password header; longer ones are refused unasked


class NginxAuth:
    def __init__(self, config: Config, userli: UserliClient, metrics: Metrics) -> None:
        self._secret = config.nginx_auth_secret.encode()
        self._backends = {protocol: (host, port) for protocol, host, port in config.nginx_auth_backends}
        self._wait = config.nginx_auth_wait
        self._timeout = config.sasl_timeout
        self._userli = userli
        self._metrics = metrics

    async def __call__(self, headers: Headers) -> Response:
        if not hmac.compare_digest(headers.get(b"x-auth-secret", b""), self._secret):
            return Response(403, "text/plain", b"forbidden\n")
        started = time.perf_counter()
        protocol = headers.get(b"auth-protocol", b"").decode("ascii", "replace").lower()
        login = unquote(headers.get(b"auth-user", b"").decode("utf-8", "replace"))
        password = unquote(headers.get(b"auth-pass", b"").decode("utf-8", "replace"))
        if headers.get(b"auth-method", b"plain").lower() != b"plain":
            return self._refused(headers, "unsupported authentication method")  # userli needs the password
        if protocol not in self._backends:
            return _reply(("Auth-Status", f"{protocol or 'this protocol'} is not served here"))
        if not login or not password or len(login) > MAX_FIELD or len(password) > MAX_FIELD:
            return self._refused(headers, INVALID)
        outcome = await self._userli.authenticate(login, password, self._timeout)
        seconds = time.perf_counter() - started
        if isinstance(outcome, Authenticated):
            self._metrics.observe_nginx_auth(protocol, "success", seconds)
            host, port = self._backends[protocol]
            return _reply(("Auth-Status", "OK"), ("Auth-Server", host), ("Auth-Port", str(port)))
        if isinstance(outcome, Refused):
            self._metrics.observe_nginx_auth(protocol, "invalid_credentials", seconds)
            log.info("nginx login refused", extra={"protocol": protocol, "user": login, "reason": outcome.reason})
            return self._refused(headers, INVALID)
        assert isinstance(outcome, Failure)
        self._metrics.observe_nginx_auth(protocol, "error", seconds)
        answer = [("Auth-Status", TEMPORARY)]
        if protocol == "smtp":
            answer.append(("Auth-Error-Code", "451 4.3.0"))
        return _reply(*answer)

    def _refused(self, headers: Headers, status: str) -> Response:
        attempt = headers.get(b"auth-login-attempt", b"1")
        answer = [("Auth-Status", status)]
        if self._wait > 0 and attempt.isdigit() and int(attempt) < MAX_ATTEMPTS_WITH_WAIT:
            answer.append(("Auth-Wait", str(max(1, round(self._wait)))))
        return _reply(*answer)


def _reply(*headers: tuple[str, str]) -> Response:
    return Response(200, "text/plain", b"", headers)
