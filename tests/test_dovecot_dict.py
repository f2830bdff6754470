"""Dovecot's userdb through the dict proxy: the codec, the listener over a real UNIX socket, and
Dovecot's own client (``doveadm dict get``) against it."""

from __future__ import annotations

import json
import os
import shutil
import smtplib
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import StartAdapter, UserliStub, free_port, port_open, wait_until
from hypothesis import given
from hypothesis import strategies as st

from adapter.config import Config, ListenAddress
from adapter.dovecot_userdb import expand
from adapter.protocols import dovecot_dict

HELLO = b"H3\t2\t0\t\tuserli\n"
USER = {
    "user": "user@example.org",
    "home": "/var/vmail/example.org/user",
    "mail": "maildir:~/Maildir",
    "quota_rule": "*:storage=1024M",
    "mail_crypt_global_public_key": "PUBKEY",
    "mail_crypt_save_version": "2",
}


@given(st.text(max_size=100))
def test_tab_escaping_round_trips_and_keeps_a_value_on_one_field(text: str) -> None:
    escaped = dovecot_dict.tabescape(text)
    assert dovecot_dict.tabunescape(escaped) == text
    assert not set("\t\r\n") & set(escaped)


def test_codec_and_templates() -> None:
    assert dovecot_dict.parse(b"Lshared/userdb/a@b\tsomeone") == dovecot_dict.Command(
        "L", ("shared/userdb/a@b", "someone")
    )
    assert dovecot_dict.found('{"a":"x\ty"}') == b'O{"a":"x\x01ty"}\n'
    assert dovecot_dict.commit_failed("7", "no") == b"F7\tno\n"
    assert (
        expand("/var/vmail/%d/%n (%u) 100%%", "john@example.org")
        == "/var/vmail/example.org/john (john@example.org) 100%"
    )


@pytest.fixture
def dict_socket(start_adapter: StartAdapter, userli: UserliStub, tmp_path: Path) -> str:
    userli.scopes = {"postfix", "dovecot"}
    path = str(tmp_path / "dict.sock")
    start_adapter(
        dovecot_dict_address=ListenAddress(path=path),
        dovecot_mail_template="maildir:~/Maildir",
        negative_ttl=0.0,
    )
    return path


def ask(path: str, *lines: bytes, replies: int | None = None) -> list[bytes]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(HELLO + b"".join(line + b"\n" for line in lines))
        received = b""
        expected = len(lines) if replies is None else replies
        while received.count(b"\n") < expected:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    return received.split(b"\n")[:expected]


def test_a_user_is_a_json_userdb(dict_socket: str) -> None:
    found, other, unknown, not_userdb = ask(
        dict_socket,
        b"Lshared/userdb/User@Example.org\tuser@example.org",  # canonical, as for the lookups
        b"Lshared/userdb/other@example.org",
        b"Lshared/userdb/nobody@example.org",
        b"Lshared/passdb/user@example.org",  # needs a password: not through a dict
    )
    assert found.startswith(b"O") and json.loads(found[1:]) == USER
    assert json.loads(other[1:]) == {
        "user": "other@example.org",
        "home": "/var/vmail/example.org/other",
        "mail": "maildir:~/Maildir",
    }
    assert unknown == b"N"
    assert not_userdb == b"N"


def test_writes_are_refused_and_iterations_are_empty(dict_socket: str) -> None:
    replies = ask(dict_socket, b"B1\t", b"S1\tshared/x\ty", b"C1", b"I0\t0\tshared/userdb/", replies=2)
    assert replies == [b"F1\twrites are not supported", b""]


def test_no_hello_closes_the_connection(dict_socket: str) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(dict_socket)
        sock.sendall(b"Lshared/userdb/user@example.org\n")
        assert sock.recv(100) == b""


def test_userli_down_is_a_failure_never_unknown_and_a_known_user_stays(dict_socket: str, userli: UserliStub) -> None:
    assert ask(dict_socket, b"Lshared/userdb/user@example.org")[0].startswith(b"O")
    userli.stop()
    known, new = ask(dict_socket, b"Lshared/userdb/user@example.org", b"Lshared/userdb/other@example.org")
    assert known.startswith(b"O")  # from the cache: deliveries go on
    assert new == b"Fuserli unreachable"  # Dovecot: temporary failure, LMTP 451


def test_missing_dovecot_scope_is_a_failure(dict_socket: str, userli: UserliStub) -> None:
    userli.scopes = {"postfix"}
    assert ask(dict_socket, b"Lshared/userdb/user@example.org") == [b"Fuserli API token lacks the dovecot scope"]


def test_the_variables() -> None:
    config = Config.from_env({"USERLI_TOKEN": "t", "DOVECOT_DICT_LISTEN_ADDR": "/run/x/dict.sock"})
    assert config.dovecot_dict_address == ListenAddress(path="/run/x/dict.sock")
    assert (config.dovecot_home_template, config.dovecot_mail_template) == ("/var/vmail/%d/%n", "")
    assert Config.from_env({"USERLI_TOKEN": "t"}).dovecot_dict_address is None


@pytest.mark.postfix  # runs with the other real-tools tests
def test_dovecots_own_client(dict_socket: str, userli: UserliStub) -> None:
    doveadm = shutil.which("doveadm")
    if doveadm is None:
        if os.environ.get("CI"):
            pytest.fail("doveadm is missing (.ci/run installs dovecot-core)")
        pytest.skip("Dovecot is not installed (apt-get install dovecot-core)")

    def get(user: str) -> subprocess.CompletedProcess[str]:
        uri = f"proxy:{dict_socket}:userli"
        command = [doveadm, "dict", "get", "-u", user, uri, f"shared/userdb/{user}"]
        return subprocess.run(command, capture_output=True, text=True, timeout=30)

    found = get("user@example.org")
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout) == USER
    missing = get("nobody@example.org")
    assert (missing.returncode, missing.stdout) == (68, "")  # EX_NOUSER: the user does not exist
    assert "doesn't exist" in missing.stderr
    userli.stop()
    failed = get("other@example.org")
    assert failed.returncode == 75, failed.stderr  # EX_TEMPFAIL: try again later, never "no such user"
    assert "dict-server returned failure: userli unreachable" in failed.stderr


DOVECOT_CONF = """
protocols = lmtp
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
ssl = no
listen = 127.0.0.1
first_valid_uid = 1
mail_uid = mail
mail_gid = mail
mail_location = maildir:~/Maildir
default_internal_user = dovecot
default_login_user = dovenull
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
}}
passdb {{
  driver = static
  args = nopassword=y
}}
userdb {{
  driver = dict
  args = {root}/userli-dict.conf.ext
}}
"""
DICT_CONF = """
uri = proxy:{root}/dict.sock:userli
iterate_disable = yes
key userdb {{
  key = userdb/%u
  format = json
}}
userdb_objects = userdb
"""


@pytest.fixture
def dovecot_lmtp(start_adapter: StartAdapter, userli: UserliStub) -> Iterator[tuple[int, Path]]:
    """A private Dovecot whose userdb is the adapter's dict, delivering over LMTP (README's 2.3
    configuration). Its auth processes run as the dovecot user: the directory must be theirs to enter."""
    dovecot = shutil.which("dovecot") or "/usr/sbin/dovecot"
    if not os.path.exists(dovecot):
        if os.environ.get("CI"):
            pytest.fail("dovecot is missing (.ci/run installs dovecot-core and dovecot-lmtpd)")
        pytest.skip("Dovecot is not installed (apt-get install dovecot-core dovecot-lmtpd)")
    userli.scopes = {"postfix", "dovecot"}
    root = Path(tempfile.mkdtemp(prefix="adapter-dovecot-"))
    root.chmod(0o755)
    for name in ("run", "state", "vmail"):
        (root / name).mkdir()
    shutil.chown(root / "vmail", "mail", "mail")
    port = free_port()
    (root / "dovecot.conf").write_text(DOVECOT_CONF.format(root=root, port=port))
    (root / "userli-dict.conf.ext").write_text(DICT_CONF.format(root=root))
    socket_path = str(root / "dict.sock")
    start_adapter(dovecot_dict_address=ListenAddress(path=socket_path), dovecot_home_template=f"{root}/vmail/%d/%n")
    process = subprocess.Popen([dovecot, "-F", "-c", str(root / "dovecot.conf")])
    try:
        wait_until(lambda: port_open(port), timeout=15)
        yield port, root / "vmail"
    finally:
        process.terminate()
        process.wait(15)
        shutil.rmtree(root, ignore_errors=True)


def test_dovecot_delivers_over_lmtp_with_the_adapters_userdb(
    dovecot_lmtp: tuple[int, Path], userli: UserliStub
) -> None:
    port, vmail = dovecot_lmtp
    with smtplib.LMTP("127.0.0.1", port, timeout=20) as lmtp:
        assert lmtp.docmd("LHLO", "mx.example.org")[0] == 250
        assert lmtp.mail("sender@example.net")[0] == 250
        assert lmtp.rcpt("user@example.org")[0] == 250
        unknown = lmtp.rcpt("nobody@example.org")
        assert unknown[0] == 550 and b"User doesn't exist" in unknown[1]  # a real "no": a bounce
        assert lmtp.data(b"Subject: through the adapter\r\n\r\nhello\r\n")[0] == 250
    delivered = list((vmail / "example.org" / "user" / "Maildir" / "new").iterdir())
    assert len(delivered) == 1 and b"through the adapter" in delivered[0].read_bytes()
    userli.stop()
    with smtplib.LMTP("127.0.0.1", port, timeout=20) as lmtp:
        lmtp.docmd("LHLO", "mx.example.org")
        lmtp.mail("sender@example.net")
        assert lmtp.rcpt("user@example.org")[0] == 250  # known: the adapter's last answer stands in
        deferred = lmtp.rcpt("other@example.org")
        assert deferred[0] == 451, deferred  # userli down: try again later, never "no such user"
