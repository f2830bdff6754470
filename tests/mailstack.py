"""A whole mail system for end-to-end tests: the userli stand-in, the adapter with all listeners,
and a private Postfix that asks the adapter for everything and delivers to local maildirs."""

from __future__ import annotations

import copy
import pwd
import shutil
import smtplib
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from helpers import DATA, RunningService, UserliStub, config_for
from postfix import PostfixInstance

from adapter.config import ListenAddress
from adapter.postfix_config import main_parameters, submission_options

LOOPBACK = ListenAddress(host="127.0.0.1", port=0)
MAILDIR_OWNER = pwd.getpwnam("nobody")

# The stand-in's accounts for the e2e suite: everybody may send freely but limited@.
E2E_DATA: dict[str, Any] = copy.deepcopy(DATA)
E2E_DATA["smtp_quota"]["user@example.org"] = {"per_hour": 0, "per_day": 0}
E2E_DATA["smtp_quota"]["limited@example.org"] = {"per_hour": 2, "per_day": 0}
E2E_DATA["mailbox"]["limited@example.org"] = True
E2E_DATA["senders"]["limited@example.org"] = ["limited@example.org"]
E2E_DATA["auth"]["limited@example.org"] = "limited pass"


class SmtpError(Exception):
    def __init__(self, code: int, text: bytes) -> None:
        super().__init__(code, text)
        self.code, self.text = code, text


class MailStack:
    def __init__(self, **adapter_overrides: Any) -> None:
        self.userli = UserliStub(E2E_DATA).start()
        self.config = config_for(
            self.userli.url,
            recipient_delimiter="+",
            sasl_address=LOOPBACK,
            sasl_failure_delay=0.1,
            **adapter_overrides,
        )
        self.adapter = RunningService(self.config)
        self.postfix = PostfixInstance()
        self.vmail = self.postfix.root / "vmail"
        self.vmail.mkdir()
        shutil.chown(self.vmail, MAILDIR_OWNER.pw_uid, MAILDIR_OWNER.pw_gid)
        self.postfix.main_cf.update(self._main_cf())
        self.postfix.services["virtual"] = self._virtual_service()
        self.postfix.start()

    def _main_cf(self) -> dict[str, str]:
        """What ``userli-postfix-adapter postfix-config`` generates for the listeners as bound: the
        maps, SMTP AUTH, and the submission service's AUTH and quota, here on the one smtpd."""
        bound = replace(
            self.config,
            socketmap_address=ListenAddress("127.0.0.1", self.adapter.socketmap_port),
            policy_address=ListenAddress("127.0.0.1", self.adapter.policy_port),
            sasl_address=ListenAddress("127.0.0.1", self.adapter.service.sasl.bound.port),  # type: ignore[union-attr]
        )
        submission = submission_options(bound)
        return {
            **main_parameters(bound),
            "smtpd_sasl_auth_enable": submission["smtpd_sasl_auth_enable"],
            "smtpd_end_of_data_restrictions": submission["smtpd_end_of_data_restrictions"],
            # Only logged-in clients are held to the senders map: inbound mail from elsewhere needs
            # no sender lookup, so it keeps flowing from the cache while userli is down.
            "smtpd_sender_restrictions": "reject_authenticated_sender_login_mismatch",
            "smtpd_relay_restrictions": "permit_sasl_authenticated, reject_unauth_destination",
            "recipient_delimiter": "+",
            "virtual_transport": "virtual",
            "virtual_mailbox_base": str(self.vmail),
            "virtual_uid_maps": f"static:{MAILDIR_OWNER.pw_uid}",
            "virtual_gid_maps": f"static:{MAILDIR_OWNER.pw_gid}",
        }

    def _virtual_service(self) -> str:
        # virtual(8) refuses socketmap for virtual_mailbox_maps (security-sensitive), and $n
        # substitution in regexp maps: it gets a local file of maildir paths, one per mailbox,
        # while smtpd still checks every recipient with the adapter.
        mailboxes = self.postfix.conf / "mailboxes"
        lines = [f"{address} {address.split('@')[1]}/{address.split('@')[0]}/" for address in E2E_DATA["mailbox"]]
        mailboxes.write_text("\n".join(lines) + "\n")
        return f"virtual unix - n n - - virtual -o virtual_mailbox_maps=texthash:{mailboxes}"

    def restart_adapter(self) -> None:
        """Stop the adapter and start a new one on the same ports (a deploy, a crash)."""
        bound = {
            "socketmap_address": replace(LOOPBACK, port=self.adapter.socketmap_port),
            "policy_address": replace(LOOPBACK, port=self.adapter.policy_port),
            "sasl_address": replace(LOOPBACK, port=self.adapter.service.sasl.bound.port),  # type: ignore[union-attr]
        }
        self.adapter.stop()
        self.config = replace(self.config, **bound)
        self.adapter = RunningService(self.config)

    def stop(self) -> None:
        self.postfix.stop()
        self.adapter.stop()
        self.userli.stop()

    # --- SMTP ---------------------------------------------------------------------------------

    def send(
        self, sender: str, recipient: str, body: str, login: tuple[str, str] | None = None, mechanism: str = "PLAIN"
    ) -> None:
        """One message in a fresh SMTP session; SmtpError on any refusal."""
        message = f"From: {sender}\r\nTo: {recipient}\r\nSubject: e2e\r\n\r\n{body}\r\n"
        with smtplib.SMTP("127.0.0.1", self.postfix.smtp_port, timeout=60) as smtp:
            if login:
                self._login(smtp, login, mechanism)
            try:
                smtp.sendmail(sender, [recipient], message)
            except smtplib.SMTPRecipientsRefused as exc:
                code, text = exc.recipients[recipient]
                raise SmtpError(code, text) from None
            except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
                raise SmtpError(exc.smtp_code, exc.smtp_error) from None

    def login(self, user: str, password: str, mechanism: str) -> int:
        with smtplib.SMTP("127.0.0.1", self.postfix.smtp_port, timeout=60) as smtp:
            try:
                self._login(smtp, (user, password), mechanism)
            except SmtpError as exc:
                return exc.code
            return 235

    @staticmethod
    def _login(smtp: smtplib.SMTP, login: tuple[str, str], mechanism: str) -> None:
        smtp.ehlo()
        smtp.esmtp_features["auth"] = mechanism
        try:
            smtp.login(*login)
        except smtplib.SMTPAuthenticationError as exc:
            raise SmtpError(exc.smtp_code, exc.smtp_error) from None

    # --- what got delivered ------------------------------------------------------------------

    def delivered(self, address: str, marker: str, timeout: float = 15.0) -> str:
        """The delivered message containing ``marker`` in ``address``'s maildir (waits for it)."""
        local, domain = address.split("@")
        new = self.vmail / domain / local / "new"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for path in new.glob("*") if new.exists() else []:
                text = path.read_text(errors="replace")
                if marker in text:
                    return text
            time.sleep(0.1)
        raise AssertionError(f"no message with {marker!r} for {address}:\n{self.postfix.maillog()[-3000:]}")

    def mailboxes(self) -> set[str]:
        return {f"{p.parent.name}@{p.parent.parent.name}" for p in self.vmail.glob("*/*/new")}

    def maildir_of(self, address: str) -> Path:
        local, domain = address.split("@")
        return self.vmail / domain / local
