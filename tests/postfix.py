"""A private Postfix instance for tests: its own config and queue under a temp dir, smtpd on a
free loopback port, started and stopped by the tests. The system's /etc/postfix and port 25 are
never touched. Mail that is accepted is discarded unless the test's main.cf says otherwise."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from helpers import free_port, wait_until

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"

MAIN_CF = {
    "compatibility_level": "3.6",
    "myhostname": "mail.test.invalid",
    "mydomain": "test.invalid",
    "inet_interfaces": "127.0.0.1",
    "inet_protocols": "ipv4",
    "mynetworks": "127.0.0.0/8",
    "mydestination": "",
    "relay_domains": "",
    "default_transport": "discard:accepted by the test instance",
    "local_transport": "discard:accepted by the test instance",
    "smtpd_relay_restrictions": "permit_mynetworks, reject",
    "smtpd_banner": "$myhostname ESMTP test",
    "biff": "no",
    "smtputf8_enable": "no",
}

# Only the services a test instance needs; all unchrooted, so plain paths work.
MASTER_CF = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000    0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class PostfixInstance:
    def __init__(self, main_cf: dict[str, str] | None = None, services: dict[str, str] | None = None) -> None:
        """``services``: master.cf lines that replace the default line of the same service name.
        Both may still be changed until ``start`` writes the configuration."""
        # Postfix's own users must reach the queue: the root of the instance is world-traversable.
        self.root = Path(tempfile.mkdtemp(prefix="postfix-test-", dir="/tmp"))
        os.chmod(self.root, 0o755)
        self.smtp_port = free_port()
        self.conf = self.root / "conf"
        for name in ("conf", "queue", "data"):
            (self.root / name).mkdir()
        shutil.chown(self.root / "data", "postfix")
        self.main_cf = {
            **MAIN_CF,
            "queue_directory": str(self.root / "queue"),
            "data_directory": str(self.root / "data"),
            "maillog_file": str(self.root / "maillog"),
            "maillog_file_prefixes": str(self.root),
            **(main_cf or {}),
        }
        self.services = dict(services or {})

    def _write_configuration(self) -> None:
        (self.conf / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in self.main_cf.items()))
        smtpd = f"127.0.0.1:{self.smtp_port} inet n - n - - smtpd\n"
        lines = [self.services.get(line.split()[0], line) for line in MASTER_CF.splitlines()]
        (self.conf / "master.cf").write_text(smtpd + "\n".join(lines) + "\n")

    def start(self) -> PostfixInstance:
        self._write_configuration()
        result = subprocess.run([POSTFIX, "-c", str(self.conf), "start"], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"postfix did not start:\n{self.maillog()}")
        # Probe by binding, not connecting: a connection would start an smtpd before the test is
        # ready for it (for instance before the SASL socket exists).
        wait_until(lambda: port_in_use(self.smtp_port), timeout=15)
        return self

    def stop(self) -> None:
        subprocess.run([POSTFIX, "-c", str(self.conf), "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def private_dir(self) -> Path:
        """Where Postfix's private sockets live (``private/...`` in main.cf is relative to the queue)."""
        return self.root / "queue" / "private"

    def maillog(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else "(no maillog)"
