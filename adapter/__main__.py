"""Entry point: ``userli-postfix-adapter`` or ``python -m adapter``.

Without a command it runs the service. The other commands are the operator's tools: ``check``,
``lookup``, ``auth`` and ``postfix-config`` (``--help`` lists them and every variable).

Exit codes of the service: 0 after a clean shutdown, 2 for a configuration error, 1 when a
listener cannot be started (address in use, permission denied).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import textwrap

import uvloop

from adapter import __version__
from adapter.config import VARIABLES, Config, ConfigError
from adapter.logs import configure

PROGRAM = "userli-postfix-adapter"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Postfix socketmap, policy and SASL server backed by the userli API. "
        "Without a command: run the service, configured by the environment variables below.",
        epilog=_variables_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROGRAM} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", help="run the service (the default)")
    commands.add_parser(
        "check",
        help="test the configuration against userli, Redis and the listen addresses; exit 0 when all pass",
    )
    lookup = commands.add_parser("lookup", help="what Postfix would get for a key, step by step")
    lookup.add_argument("map", metavar="MAP", help="alias, domain, mailbox or senders")
    lookup.add_argument("key", metavar="KEY", help="the key as Postfix sends it, e.g. user@example.org")
    auth = commands.add_parser(
        "auth", help="what SMTP AUTH would answer for a login; the password is read from a prompt or stdin"
    )
    auth.add_argument("login", metavar="LOGIN", help="the login, e.g. user@example.org")
    postfix = commands.add_parser("postfix-config", help="the main.cf and master.cf lines for this configuration")
    postfix.add_argument("--host", default="127.0.0.1", help="how Postfix reaches the adapter (default 127.0.0.1)")
    part = postfix.add_mutually_exclusive_group()
    part.add_argument("--main", action="store_true", help="only the main.cf lines")
    part.add_argument("--master", action="store_true", help="only the master.cf entry")
    return parser


def _variables_help() -> str:
    lines = ["environment variables (durations: 500ms, 5s, 2m, 1h30m or seconds):"]
    for variable in VARIABLES:
        lines.append(f"  {' / '.join(variable.names)}  [default: {variable.plain_default}]")
        lines += textwrap.wrap(variable.plain_meaning, width=96, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "serve"
    env = dict(os.environ)
    if command == "postfix-config" and not (env.get("USERLI_TOKEN") or env.get("USERLI_TOKEN_FILE")):
        env["USERLI_TOKEN"] = "unused"  # Postfix's side needs no token
    try:
        config = Config.from_env(env)
    except ConfigError as exc:
        print(f"{PROGRAM}: configuration error: {exc}", file=sys.stderr)
        return 2
    if command == "serve":
        return _serve(config)
    configure("error", "text")  # the tools print what they found; the log only says what broke
    if command == "check":
        return _check(config)
    if command == "lookup":
        from adapter.trace import lookup

        return uvloop.run(lookup(config, args.map, args.key))
    if command == "auth":
        from adapter.trace import auth

        return uvloop.run(auth(config, args.login, _password()))
    from adapter.postfix_config import main_cf, master_cf

    parts = [main_cf(config, args.host)] if not args.master else []
    parts += [master_cf(config, args.host)] if not args.main else []
    print("\n".join(parts), end="")
    return 0


def _serve(config: Config) -> int:
    from adapter.service import Service

    configure(config.log_level, config.log_format)
    try:
        uvloop.run(Service(config).run())
    except OSError as exc:
        print(f"{PROGRAM} {__version__}: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def _check(config: Config) -> int:
    from adapter.check import run_checks

    checks = uvloop.run(run_checks(config))
    for check in checks:
        print(check.line())
    return 0 if all(check.ok for check in checks) else 1


def _password() -> str:
    """From a prompt on a terminal, else the first line of stdin: never from the command line."""
    if sys.stdin.isatty():
        return getpass.getpass("Password: ")
    return sys.stdin.readline().rstrip("\r\n")


if __name__ == "__main__":
    sys.exit(main())
