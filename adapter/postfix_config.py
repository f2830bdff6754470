"""``userli-postfix-adapter postfix-config``: the Postfix side of this configuration, generated.

main.cf parameters for the maps and SMTP AUTH, and a master.cf submission service that requires
logins, checks senders against them and enforces the sending quota, for the listeners as
configured: TCP, or UNIX sockets (through ``proxy:`` for the maps, since a chrooted smtpd cannot
reach a socket outside Postfix's queue directory; inside it, the path a chrooted smtpd sees).
"""

from __future__ import annotations

from adapter import __version__
from adapter.config import Config, ListenAddress

__all__ = ["main_cf", "main_parameters", "master_cf", "submission_options"]

QUEUE_DIRECTORY = "/var/spool/postfix"  # Postfix's default; where a chrooted smtpd lives
MAPS = (
    ("virtual_mailbox_domains", "domain", "domains whose mail is delivered here"),
    ("virtual_mailbox_maps", "mailbox", "existing mailboxes: unknown recipients are rejected"),
    ("virtual_alias_maps", "alias", "aliases, and the catch-all of alias domains"),
    ("smtpd_sender_login_maps", "senders", "who may send as which address"),
)
COMMENTS = {
    **{parameter: meaning for parameter, _, meaning in MAPS},
    "smtpd_sasl_type": "SMTP AUTH checked against userli (Dovecot's auth protocol); enabled on submission",
}


def main_parameters(config: Config, host: str = "127.0.0.1") -> dict[str, str]:
    if config.socketmap_address.path is not None:  # proxymap(8) is not chrooted, and shares connections
        socketmap = f"proxy:socketmap:unix:{config.socketmap_address.path}"
    else:
        socketmap = f"socketmap:{_endpoint(config.socketmap_address, host)}"
    parameters = {parameter: f"{socketmap}:{map_name}" for parameter, map_name, _ in MAPS}
    if config.sasl_address is not None:
        parameters["smtpd_sasl_type"] = "dovecot"
        # Dovecot's SASL client takes a UNIX socket as a bare path (in the queue directory: relative)
        path = config.sasl_address.path
        parameters["smtpd_sasl_path"] = (_in_queue(path) or path) if path else _endpoint(config.sasl_address, host)
    return parameters


def submission_options(config: Config, host: str = "127.0.0.1") -> dict[str, str]:
    """The ``-o`` parameters of the submission service."""
    options = {
        "syslog_name": "postfix/submission",
        "smtpd_tls_security_level": "encrypt",
        "smtpd_tls_auth_only": "yes",
    }
    if config.sasl_address is not None:
        options.update(
            smtpd_sasl_auth_enable="yes",
            smtpd_client_restrictions="permit_sasl_authenticated,reject",
            smtpd_sender_restrictions="reject_sender_login_mismatch",
            smtpd_recipient_restrictions="permit_sasl_authenticated,reject",
        )
    if config.policy_address is not None:
        policy = _from_chroot(config.policy_address, host)
        # default_action: if the adapter is not running at all, mail still goes out
        options["smtpd_end_of_data_restrictions"] = f"check_policy_service {{ {policy}, default_action=DUNNO }}"
    return options


def main_cf(config: Config, host: str = "127.0.0.1") -> str:
    lines = [f"# userli-postfix-adapter {__version__}: main.cf (postconf -e, or append; then postfix reload)"]
    if config.socketmap_address.path is not None:
        lines.append("# The maps go through proxymap(8): a chrooted smtpd cannot reach the UNIX socket itself.")
    for parameter, value in main_parameters(config, host).items():
        if parameter in COMMENTS:
            lines.append(f"# {COMMENTS[parameter]}")
        lines.append(f"{parameter} = {value}")
    return "\n".join(lines) + "\n"


def master_cf(config: Config, host: str = "127.0.0.1") -> str:
    """The submission service: TLS, logins only, senders checked against the login, the quota."""
    lines = [f"# userli-postfix-adapter {__version__}: master.cf (replace the submission entry; then postfix reload)"]
    outside = _outside_queue(config)
    for path in outside:
        lines.append(
            f"# {path} is outside {QUEUE_DIRECTORY}: a chrooted smtpd cannot reach it, so this one is not chrooted"
        )
    if config.policy_address is not None:
        lines.append("# Sending quotas are checked at the end of each message.")
    lines.append(f"submission inet  n       -       {'n' if outside else 'y'}       -       -       smtpd")
    for name, value in submission_options(config, host).items():
        lines.append(f"  -o {{ {name} = {value} }}" if " " in value else f"  -o {name}={value}")
    return "\n".join(lines) + "\n"


def _endpoint(address: ListenAddress, host: str) -> str:
    if address.path is not None:
        return f"unix:{address.path}"
    return f"inet:{host if address.host in (None, '', '0.0.0.0', '::') else address.host}:{address.port}"


def _in_queue(path: str) -> str | None:
    """The path as a chrooted smtpd sees it (relative to the queue directory), or None."""
    prefix = QUEUE_DIRECTORY + "/"
    return path[len(prefix) :] if path.startswith(prefix) else None


def _from_chroot(address: ListenAddress, host: str) -> str:
    """How smtpd names a listener: a UNIX socket in the queue directory by its relative path."""
    if address.path is not None and _in_queue(address.path) is not None:
        return f"unix:{_in_queue(address.path)}"
    return _endpoint(address, host)


def _outside_queue(config: Config) -> list[str]:
    """UNIX sockets smtpd must reach itself that a chrooted smtpd could not."""
    sockets = [a.path for a in (config.sasl_address, config.policy_address) if a is not None and a.path is not None]
    return [path for path in sockets if _in_queue(path) is None]
