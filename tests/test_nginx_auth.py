"""nginx mail's auth_http: the route over real HTTP, and a real nginx (the Debian module
libnginx-mod-mail) proxying SMTP and IMAP on loopback to local backends after asking it."""

from __future__ import annotations

import imaplib
import os
import shutil
import smtplib
import socketserver
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import RunningService, StartAdapter, UserliStub, free_port, port_open, wait_until

SECRET = "nginx-shared-secret-0123"
MAIL_MODULE = "/usr/lib/nginx/modules/ngx_mail_module.so"


def nginx_config(**overrides: object) -> dict[str, object]:
    return {
        "nginx_auth_secret": SECRET,
        "nginx_auth_backends": (("smtp", "127.0.0.1", 2525), ("imap", "127.0.0.1", 1143)),
        "nginx_auth_wait": 1.0,
        "sasl_failure_delay": 0.0,
        **overrides,
    }


def auth(running: RunningService, **headers: str) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(running.http_url + "/auth/nginx", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, {k: v for k, v in response.headers.items() if k.startswith("Auth-")}
    except urllib.error.HTTPError as error:
        return error.code, {}


def login(user: str, password: str, protocol: str = "smtp", attempt: str = "1") -> dict[str, str]:
    return {
        "X-Auth-Secret": SECRET,
        "Auth-Method": "plain",
        "Auth-User": user,
        "Auth-Pass": password,
        "Auth-Protocol": protocol,
        "Auth-Login-Attempt": attempt,
        "Client-IP": "192.0.2.1",
    }


def test_the_route_is_off_by_default(adapter: RunningService) -> None:
    assert auth(adapter, **login("user@example.org", "correct horse"))[0] == 404


def test_answers_for_nginx(start_adapter: StartAdapter, userli: UserliStub) -> None:
    running = start_adapter(**nginx_config())
    assert auth(running, **login("user@example.org", "correct horse")) == (
        200,
        {"Auth-Status": "OK", "Auth-Server": "127.0.0.1", "Auth-Port": "2525"},
    )
    assert auth(running, **login("user@example.org", "correct%20horse", "imap"))[1]["Auth-Port"] == "1143"
    assert auth(running, **login("user@example.org", "wrong")) == (
        200,
        {"Auth-Status": "Invalid login or password", "Auth-Wait": "1"},
    )
    assert auth(running, **login("user@example.org", "wrong", attempt="10"))[1] == {
        "Auth-Status": "Invalid login or password"  # enough: nginx closes
    }
    assert auth(running, **login("user@example.org", "correct horse", "pop3"))[1]["Auth-Status"] != "OK"
    userli.stop()
    assert auth(running, **login("user@example.org", "correct horse")) == (
        200,
        {"Auth-Status": "Temporary server problem, try again later", "Auth-Error-Code": "451 4.3.0"},
    )
    assert auth(running, **login("user@example.org", "correct horse", "imap"))[1] == {
        "Auth-Status": "Temporary server problem, try again later"
    }


def test_without_the_secret_nothing_is_said_about_a_login(start_adapter: StartAdapter, userli: UserliStub) -> None:
    running = start_adapter(**nginx_config())
    headers = login("user@example.org", "correct horse")
    for secret in ("", "wrong", SECRET + "x"):
        headers["X-Auth-Secret"] = secret
        assert auth(running, **headers) == (403, {})
    assert not any("auth" in path for path in userli.paths())  # userli was never asked


# --- a real nginx ------------------------------------------------------------------------------


class _Backend(socketserver.StreamRequestHandler):
    """A mail server behind nginx: records what it is told, accepts what a test needs."""

    def handle(self) -> None:
        server: Backend = self.server  # type: ignore[assignment]
        if server.protocol == "smtp":
            self.wfile.write(b"220 backend ESMTP\r\n")
        else:
            self.wfile.write(b"* OK backend ready\r\n")
        literal_tag = b""  # the tag of an IMAP command sent in literals, until its last line
        while line := self.rfile.readline():
            server.seen.append(line)
            if line.rstrip().endswith(b"}"):  # an IMAP literal: ask for it, then read it
                literal_tag = literal_tag or line.split(b" ")[0]
                size = int(line.rstrip().rsplit(b"{", 1)[1][:-1])
                self.wfile.write(b"+ go ahead\r\n")
                self.wfile.flush()
                server.seen.append(self.rfile.read(size))
                continue
            if literal_tag:  # the rest of the command after its literals
                self.wfile.write(literal_tag + b" OK done\r\n")
                self.wfile.flush()
                literal_tag = b""
                continue
            word = line.split(b" ")
            if server.protocol == "smtp":
                command = word[0].strip().upper()
                self.wfile.write(b"221 bye\r\n" if command == b"QUIT" else b"250 ok\r\n")
                if command == b"QUIT":
                    return
            elif len(word) > 1:
                tag, command = word[0], word[1].strip().upper()
                if command == b"LOGOUT":
                    self.wfile.write(b"* BYE\r\n" + tag + b" OK bye\r\n")
                    return
                self.wfile.write(b"* CAPABILITY IMAP4rev1\r\n" if command == b"CAPABILITY" else b"")
                self.wfile.write(tag + b" OK done\r\n")
            self.wfile.flush()


class Backend(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, protocol: str) -> None:
        super().__init__(("127.0.0.1", 0), _Backend)
        self.protocol = protocol
        self.seen: list[bytes] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.fixture
def nginx_mail(start_adapter: StartAdapter, tmp_path: Path) -> Iterator[dict[str, object]]:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not (os.path.exists(binary) and os.path.exists(MAIL_MODULE)):
        if os.environ.get("CI"):
            pytest.fail("nginx's mail module is missing (.ci/run installs libnginx-mod-mail)")
        pytest.skip("nginx with the mail module is not installed (apt-get install libnginx-mod-mail)")
    smtp_backend, imap_backend = Backend("smtp"), Backend("imap")
    backends = (
        ("smtp", "127.0.0.1", smtp_backend.server_address[1]),
        ("imap", "127.0.0.1", imap_backend.server_address[1]),
    )
    running = start_adapter(**nginx_config(nginx_auth_backends=backends))
    smtp_port, imap_port = free_port(), free_port()
    (tmp_path / "nginx.conf").write_text(
        f"""
load_module {MAIL_MODULE};
daemon off;
master_process off;
user root;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log info;
events {{ worker_connections 64; }}
mail {{
    server_name mail.example.org;
    auth_http {running.http_url.removeprefix("http://")}/auth/nginx;
    auth_http_header X-Auth-Secret {SECRET};
    proxy_pass_error_message on;
    server {{ listen 127.0.0.1:{smtp_port}; protocol smtp; smtp_auth login plain; xclient off; }}
    server {{ listen 127.0.0.1:{imap_port}; protocol imap; imap_auth login plain; }}
}}
"""
    )
    process = subprocess.Popen(
        [binary, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")], stderr=subprocess.PIPE
    )
    try:
        wait_until(lambda: port_open(smtp_port) and port_open(imap_port), timeout=10)
        yield {"smtp": smtp_port, "imap": imap_port, "smtp_backend": smtp_backend, "imap_backend": imap_backend}
    finally:
        process.terminate()
        process.wait(10)
        smtp_backend.shutdown()
        imap_backend.shutdown()


def test_nginx_proxies_smtp_after_userli_accepts(nginx_mail: dict[str, object], userli: UserliStub) -> None:
    with smtplib.SMTP("127.0.0.1", nginx_mail["smtp"], timeout=20) as smtp:  # type: ignore[arg-type]
        smtp.ehlo("client.example")
        code, _ = smtp.login("user@example.org", "correct horse")
        assert code == 235
        assert smtp.noop()[0] == 250  # now talking to the backend through nginx
    backend: Backend = nginx_mail["smtp_backend"]  # type: ignore[assignment]
    assert any(line.upper().startswith((b"EHLO", b"HELO")) for line in backend.seen)


def test_nginx_refuses_a_wrong_password_and_defers_when_userli_is_down(
    nginx_mail: dict[str, object], userli: UserliStub
) -> None:
    with smtplib.SMTP("127.0.0.1", nginx_mail["smtp"], timeout=20) as smtp:  # type: ignore[arg-type]
        smtp.ehlo("client.example")
        started = time.monotonic()
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            smtp.login("user@example.org", "wrong")
        assert refused.value.smtp_code == 535
        assert time.monotonic() - started >= 0.9  # nginx held the answer for Auth-Wait
    backend: Backend = nginx_mail["smtp_backend"]  # type: ignore[assignment]
    assert backend.seen == []  # a refused client never reaches the mail server
    userli.stop()
    with smtplib.SMTP("127.0.0.1", nginx_mail["smtp"], timeout=20) as smtp:  # type: ignore[arg-type]
        smtp.ehlo("client.example")
        smtp.user, smtp.password = "user@example.org", "correct horse"
        with pytest.raises(smtplib.SMTPAuthenticationError) as deferred:
            smtp.auth("PLAIN", smtp.auth_plain)  # one mechanism: nginx closes after a temporary failure
        assert deferred.value.smtp_code == 451  # try again later, not "wrong password"
        assert b"Temporary server problem" in deferred.value.smtp_error


def test_nginx_proxies_imap_after_userli_accepts(nginx_mail: dict[str, object], userli: UserliStub) -> None:
    imap = imaplib.IMAP4("127.0.0.1", nginx_mail["imap"], timeout=20)  # type: ignore[arg-type]
    assert imap.login("user@example.org", "correct horse")[0] == "OK"
    imap.logout()
    backend: Backend = nginx_mail["imap_backend"]  # type: ignore[assignment]
    assert b"user@example.org" in b"".join(backend.seen)  # nginx logged in to the backend as the user
    imap = imaplib.IMAP4("127.0.0.1", nginx_mail["imap"], timeout=20)  # type: ignore[arg-type]
    with pytest.raises(imaplib.IMAP4.error):
        imap.login("user@example.org", "wrong")
