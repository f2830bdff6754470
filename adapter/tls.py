"""The TLS context for userli: whose certificates to trust, and the adapter's own for mutual TLS.

By default httpx's trust store (certifi). ``USERLI_CA_FILE`` -- or OpenSSL's standard
``SSL_CERT_FILE``/``SSL_CERT_DIR`` -- replaces it, for a userli behind a private CA;
``USERLI_CLIENT_CERT`` (and ``USERLI_CLIENT_KEY`` when the key is a file of its own) present a
client certificate. Every file is loaded at start-up, so a wrong path stops the start with one
line naming the variable instead of failing every lookup later.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import httpx

__all__ = ["TlsFiles", "client_context", "describe_tls_error"]


class TlsConfigError(ValueError):
    """A TLS file cannot be used; the message starts with the variable's name."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca_file: str = ""  # PEM bundle of the CAs to trust instead of certifi's
    ca_dir: str = ""  # an OpenSSL hashed directory of CAs (SSL_CERT_DIR)
    ca_variable: str = "USERLI_CA_FILE"  # where ca_file came from, for error messages
    client_cert: str = ""
    client_key: str = ""

    @property
    def custom(self) -> bool:
        return bool(self.ca_file or self.ca_dir or self.client_cert)


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """A verifying client context (hostname checked, TLS 1.2 or newer)."""
    if not (files.ca_file or files.ca_dir):
        context = httpx.create_ssl_context(trust_env=False)  # certifi, as httpx would
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies peer and hostname; trusts nothing yet
        try:
            context.load_verify_locations(cafile=files.ca_file or None, capath=files.ca_dir or None)
        except (OSError, ssl.SSLError) as exc:
            variable = files.ca_variable if files.ca_file else "SSL_CERT_DIR"
            raise TlsConfigError(f"{variable}: cannot load CA certificates: {_reason(exc)}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if files.client_cert:
        try:
            context.load_cert_chain(files.client_cert, files.client_key or None)
        except (OSError, ssl.SSLError) as exc:
            variable = (
                "USERLI_CLIENT_KEY" if files.client_key and isinstance(exc, ssl.SSLError) else "USERLI_CLIENT_CERT"
            )
            raise TlsConfigError(f"{variable}: cannot load the client certificate: {_reason(exc)}") from None
    return context


def describe_tls_error(exc: BaseException) -> str | None:
    """What went wrong in a TLS handshake, fit for a log line (no secrets in it), or None."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not accepted: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc.__class__.__name__}"
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or exc.__class__.__name__
    return getattr(exc, "strerror", None) or exc.__class__.__name__
