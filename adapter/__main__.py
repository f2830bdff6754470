"""Entry point: ``userli-postfix-adapter`` or ``python -m adapter``.

Exit codes: 0 after a clean shutdown, 2 for a configuration error, 1 when a listener cannot be
started (address in use, permission denied).
"""

from __future__ import annotations

import sys

import uvloop

from adapter import __version__
from adapter.config import Config, ConfigError
from adapter.logs import configure
from adapter.service import Service


def main() -> int:
    try:
        config = Config.from_env()
    except ConfigError as exc:
        print(f"userli-postfix-adapter: configuration error: {exc}", file=sys.stderr)
        return 2
    configure(config.log_level, config.log_format)
    try:
        uvloop.run(Service(config).run())
    except OSError as exc:
        print(f"userli-postfix-adapter {__version__}: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
