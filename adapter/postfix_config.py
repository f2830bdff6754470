"""``userli-postfix-adapter postfix-config``: the Postfix side of this configuration, generated.

main.cf lines for the maps, SMTP AUTH and the sending quota, and a master.cf submission service
that uses them, for the listeners as configured: TCP, or UNIX sockets (through ``proxy:`` for
the maps, and inside Postfix's queue directory for sockets a chrooted smtpd must reach).
"""

from __future__ import annotations

from adapter import __version__
from adapter.config import Config, ListenAddress

__all__ = ["main_cf", "master_cf"]

QUEUE_DIRECTORY = "/var/spool/postfix"  # Postfix's default; where a chrooted smtpd lives
MAPS = (
    ("virtual_mailbox_domains", "domain", "domains whose mail is delivered here"),
    ("virtual_mailbox_maps", "mailbox", "existing mailboxes: unknown recipients are rejected"),
    ("virtual_alias_maps", "alias", "aliases, and the catch-all of alias domains"),
    ("smtpd_sender_login_maps", "senders", "who may send as which address"),
)


def _endpoint(address: ListenAddress, host: str) -> str:
    if address.path is not None:
        return f"unix:{address.path}"
    return f"inet:{host if address.host in (None, '', '0.0.0.0', '::') else address.host}:{address.port}"


def _in_queue(path: str) -> str | None:
    """The path as a chrooted smtpd sees it (relative to the queue directory), or None."""
    prefix = QUEUE_DIRECTORY + "/"
    return path[len(prefix) :] if path.startswith(prefix) else None


def main_cf(config: Config, host: str = "127.0.0.1") -> str:
    socketmap = _endpoint(config.socketmap_address, host)
    lines = [f"# userli-postfix-adapter {__version__}: main.cf (postconf -e, or append; then postfix reload)"]
    if config.socketmap_address.path is not None:
        lines.append(
            "# The socketmap listens on a UNIX socket: the maps go through proxymap(8), which does not run\n"
            "# chrooted (a chrooted smtpd cannot reach the socket), and shares its connections."
        )
        socketmap = f"proxy:socketmap:{socketmap}"
    else:
        socketmap = f"socketmap:{socketmap}"
    for parameter, map_name, meaning in MAPS:
        lines.append(f"# {meaning}")
        lines.append(f"{parameter} = {socketmap}:{map_name}")
    if config.sasl_address is not None:
        lines += [
            "# SMTP AUTH checked against userli (Dovecot's auth protocol); enabled on submission in master.cf",
            "smtpd_sasl_type = dovecot",
            f"smtpd_sasl_path = {_sasl_path(config.sasl_address, host)}",
        ]
    return "\n".join(lines) + "\n"


def _sasl_path(address: ListenAddress, host: str) -> str:
    if address.path is None:
        return _endpoint(address, host)
    return _in_queue(address.path) or address.path


def _outside_note(path: str) -> str:
    return f"# {path} is outside {QUEUE_DIRECTORY}: a chrooted smtpd cannot reach it, so this one runs without chroot"


def master_cf(config: Config, host: str = "127.0.0.1") -> str:
    """The submission service: TLS, logins only, sender checked against the login, the quota."""
    chroot = "y"
    options = [
        "-o syslog_name=postfix/submission",
        "-o smtpd_tls_security_level=encrypt",
        "-o smtpd_tls_auth_only=yes",
    ]
    notes = [f"# userli-postfix-adapter {__version__}: master.cf (replace the submission entry; then postfix reload)"]
    if config.sasl_address is not None:
        options += [
            "-o smtpd_sasl_auth_enable=yes",
            "-o smtpd_client_restrictions=permit_sasl_authenticated,reject",
            "-o smtpd_sender_restrictions=reject_sender_login_mismatch",
            "-o smtpd_recipient_restrictions=permit_sasl_authenticated,reject",
        ]
        if config.sasl_address.path is not None and _in_queue(config.sasl_address.path) is None:
            chroot = "n"
            notes.append(_outside_note(config.sasl_address.path))
    if config.policy_address is not None:
        policy = _endpoint(config.policy_address, host)
        if config.policy_address.path is not None:
            inside = _in_queue(config.policy_address.path)
            policy = f"unix:{inside}" if inside else policy
            if inside is None:
                chroot = "n"
                notes.append(_outside_note(config.policy_address.path))
        notes.append("# Sending quotas are checked at the end of each message; if the adapter is down, mail goes on.")
        options.append(
            f"-o {{ smtpd_end_of_data_restrictions = check_policy_service {{ {policy}, default_action=DUNNO }} }}"
        )
    entry = f"submission inet  n       -       {chroot}       -       -       smtpd"
    return "\n".join([*notes, entry, *(f"  {option}" for option in options)]) + "\n"
