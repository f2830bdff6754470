"""The operator's command line, run as a process: --help and --version without configuration,
check, lookup, auth and postfix-config against a userli stand-in and Postfix's own tools."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from helpers import TOKEN, UserliStub, free_port, variables_the_code_reads

from adapter import __version__
from adapter.config import VARIABLES, Config, markdown_table

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str], env: Mapping[str, str] | None = None, stdin: str = "") -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("USERLI_", "SASL_", "POLICY_", "SOCKETMAP_"))}
    return subprocess.run(
        [sys.executable, "-m", "adapter", *args],
        env={**base, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_help_works_without_configuration_and_lists_every_variable() -> None:
    done = run(["--help"])
    assert done.returncode == 0, done.stderr
    for command in ("check", "lookup", "auth", "postfix-config"):
        assert command in done.stdout
    for variable in VARIABLES:
        assert f"{' / '.join(variable.names)}  [default: {variable.plain_default}]" in done.stdout
    assert "`" not in done.stdout  # Markdown is for the README


def test_version_works_without_configuration() -> None:
    done = run(["--version"])
    assert (done.returncode, done.stdout) == (0, f"userli-postfix-adapter {__version__}\n")


def test_the_readme_table_is_the_one_the_code_defines() -> None:
    assert markdown_table() in (ROOT / "README.md").read_text()


def test_every_variable_read_is_documented_and_every_documented_one_is_read() -> None:
    documented = {name for variable in VARIABLES for name in variable.names}
    assert (
        variables_the_code_reads() - {"SSL_CERT_FILE", "SSL_CERT_DIR"} == documented
    )  # OpenSSL's own, documented with USERLI_CA_FILE


def test_defaults_come_from_the_documented_table() -> None:
    config = Config.from_env({"USERLI_TOKEN": TOKEN})
    assert config == Config(userli_token=TOKEN)  # the dataclass's defaults say the same as the table


@pytest.fixture
def userli() -> Iterator[UserliStub]:
    stub = UserliStub().start()
    yield stub
    stub.stop()


def env_for(userli: UserliStub, **extra: str) -> dict[str, str]:
    return {
        "USERLI_TOKEN": TOKEN,
        "USERLI_BASE_URL": userli.url,
        "SOCKETMAP_LISTEN_ADDR": f"127.0.0.1:{free_port()}",
        "METRICS_LISTEN_ADDR": f"127.0.0.1:{free_port()}",
        "POLICY_LISTEN_ADDR": f"127.0.0.1:{free_port()}",
        **extra,
    }


def test_check_passes_when_everything_is_in_place(userli: UserliStub, tmp_path: Path) -> None:
    done = run(["check"], env_for(userli, SASL_LISTEN_ADDR=str(tmp_path / "auth.sock")))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert all(line.startswith("ok") for line in lines), done.stdout
    assert any("userli" in line and "postfix scope" in line for line in lines)
    assert any("smtp_quota route" in line for line in lines)
    assert any("auth route" in line for line in lines)
    assert sum("listener" in line for line in lines) == 4
    assert TOKEN not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        ("token", "userli rejected the API token (check USERLI_TOKEN"),
        ("scope", "userli API token lacks the postfix scope"),
        ("old", "userli has no auth route (SMTP AUTH needs userli 6.9.0 or newer"),
        ("down", "userli unreachable"),
    ],
)
def test_check_names_what_is_wrong(userli: UserliStub, tmp_path: Path, problem: str, expected: str) -> None:
    env = env_for(userli, SASL_LISTEN_ADDR=str(tmp_path / "auth.sock"))
    if problem == "token":
        env["USERLI_TOKEN"] = "wrong-token"
    elif problem == "scope":
        userli.scopes = {"dovecot"}
    elif problem == "old":
        userli.version = (6, 8, 0)
    else:
        env["USERLI_BASE_URL"] = f"http://127.0.0.1:{free_port()}"
    done = run(["check"], env)
    assert done.returncode == 1
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert failed and expected in failed[0], done.stdout


def test_check_covers_the_dovecot_scope_when_the_dict_server_is_on(userli: UserliStub, tmp_path: Path) -> None:
    env = env_for(userli, DOVECOT_DICT_LISTEN_ADDR=str(tmp_path / "dict.sock"))
    done = run(["check"], env)
    assert done.returncode == 1
    assert "FAIL  Dovecot userdb (dict server): userli API token lacks the dovecot scope" in done.stdout, done.stdout
    userli.scopes = {"postfix", "dovecot"}
    done = run(["check"], env)
    assert done.returncode == 0, done.stdout
    assert "ok    Dovecot userdb (dict server)" in done.stdout
    assert "ok    listener DOVECOT_DICT_LISTEN_ADDR" in done.stdout


def test_check_finds_a_listen_address_in_use(userli: UserliStub) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run(["check"], env_for(userli, SOCKETMAP_LISTEN_ADDR=f"127.0.0.1:{port}"))
    assert done.returncode == 1
    assert re.search(rf"FAIL\s+listener SOCKETMAP_LISTEN_ADDR: cannot bind 127.0.0.1:{port}", done.stdout), done.stdout


@pytest.mark.parametrize(
    ("args", "code", "shown"),
    [
        (["mailbox", "User@Example.ORG"], 0, ["canonical keys, in order: user@example.org", "HTTP 200", "'OK 1'"]),
        (
            ["alias", "nobody+tag@example.org"],
            1,
            ["nobody+tag@example.org, nobody@example.org", "'NOTFOUND '", "userli alias: HTTP 200"],
        ),
        (["alias", "team@example.org"], 0, ["'OK user@example.org,other@example.org'"]),
        (["nomap", "a@example.org"], 2, ["'PERM unknown map name'"]),
    ],
)
def test_lookup_shows_what_postfix_would_get(userli: UserliStub, args: list[str], code: int, shown: list[str]) -> None:
    done = run(["lookup", *args], env_for(userli, POSTFIX_RECIPIENT_DELIMITER="+"))
    assert done.returncode == code, done.stdout + done.stderr
    for text in shown:
        assert text in done.stdout, done.stdout
    assert TOKEN not in done.stdout + done.stderr


def test_lookup_while_userli_is_down_is_temp(userli: UserliStub) -> None:
    done = run(
        ["lookup", "mailbox", "user@example.org"], env_for(userli, USERLI_BASE_URL=f"http://127.0.0.1:{free_port()}")
    )
    assert done.returncode == 2
    assert "'TEMP userli unreachable'" in done.stdout
    assert "no response" in done.stdout


@pytest.mark.parametrize(
    ("password", "code", "answer"),
    [("correct horse", 0, "235"), ("wrong", 1, "535"), ("pw", 1, "535")],
)
def test_auth_reads_the_password_from_stdin_and_never_shows_it(
    userli: UserliStub, password: str, code: int, answer: str
) -> None:
    login = "spammer@example.org" if password == "pw" else "user@example.org"
    done = run(["auth", login], env_for(userli), stdin=password + "\n")
    assert done.returncode == code, done.stdout + done.stderr
    assert f"Postfix would answer: {answer}" in done.stdout
    assert password not in done.stdout + done.stderr


def test_postfix_config_needs_no_token() -> None:
    done = run(["postfix-config", "--main"])
    assert done.returncode == 0, done.stderr
    assert "virtual_mailbox_maps = socketmap:inet:127.0.0.1:10001:mailbox" in done.stdout


POSTFIX_SETUPS = {
    "tcp": {"SASL_LISTEN_ADDR": "127.0.0.1:10004"},
    "unix": {
        "SOCKETMAP_LISTEN_ADDR": "/run/userli-postfix-adapter/socketmap.sock",
        "POLICY_LISTEN_ADDR": "/var/spool/postfix/private/userli-policy",
        "SASL_LISTEN_ADDR": "/var/spool/postfix/private/userli-auth",
    },
    "unix outside the queue": {
        "SASL_LISTEN_ADDR": "/run/userli-postfix-adapter/auth.sock",
        "POLICY_LISTEN_ADDR": "off",
    },
}


@pytest.mark.parametrize("setup", list(POSTFIX_SETUPS))
def test_postfix_config_passes_postfixs_own_checks(setup: str, tmp_path: Path) -> None:
    postconf = shutil.which("postconf") or "/usr/sbin/postconf"
    if not os.path.exists(postconf):
        if os.environ.get("CI"):
            pytest.fail("Postfix is missing (.ci/run installs it)")
        pytest.skip("Postfix not installed")
    env = {"USERLI_TOKEN": TOKEN, **POSTFIX_SETUPS[setup]}
    main_cf, master_cf = run(["postfix-config", "--main"], env), run(["postfix-config", "--master"], env)
    assert main_cf.returncode == master_cf.returncode == 0, main_cf.stderr + master_cf.stderr
    shipped = (
        "/etc/postfix/master.cf" if os.path.exists("/etc/postfix/master.cf") else "/usr/share/postfix/master.cf.dist"
    )
    shutil.copy(shipped, tmp_path / "master.cf")
    (tmp_path / "main.cf").write_text(f"compatibility_level = 3.6\n{main_cf.stdout}")
    with (tmp_path / "master.cf").open("a") as master:
        master.write(master_cf.stdout)
    shown = subprocess.run([postconf, "-c", str(tmp_path), "-n"], capture_output=True, text=True, check=True)
    assert shown.stderr == "", shown.stderr  # no warning about an unknown or malformed parameter
    for line in main_cf.stdout.splitlines():
        if not line.startswith("#"):
            assert line in shown.stdout
    services = subprocess.run([postconf, "-c", str(tmp_path), "-M", "submission/inet"], capture_output=True, text=True)
    assert services.returncode == 0 and services.stderr == "", services.stderr
    assert "smtpd" in services.stdout
    if "POLICY_LISTEN_ADDR" not in env or env["POLICY_LISTEN_ADDR"] != "off":
        assert "check_policy_service" in services.stdout
    postfix = shutil.which("postfix") or "/usr/sbin/postfix"
    checked = subprocess.run([postfix, "-c", str(tmp_path), "check"], capture_output=True, text=True)
    assert checked.returncode == 0 and checked.stderr == "", checked.stderr
    with (tmp_path / "master.cf").open("a") as master:  # and the check does find a broken file
        master.write("broken inet n\n")
    assert subprocess.run([postfix, "-c", str(tmp_path), "check"], capture_output=True).returncode != 0
