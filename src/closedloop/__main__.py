"""``python -m closedloop`` and the ``closedloop`` command.

The command line needs the ``server`` extra; with only the light SDK installed it says so
instead of failing with an import error.
"""

from __future__ import annotations

import sys

__all__ = ["run"]


def run() -> None:
    """Start the command line, or explain which extra to install."""
    try:
        from closedloop.cli import main
    except ImportError as exc:
        sys.exit(
            "closedloop: the command line needs the server extra; install it with "
            f"`pip install 'closedloop[server]'` (missing: {exc.name})"
        )
    main()


if __name__ == "__main__":
    run()
