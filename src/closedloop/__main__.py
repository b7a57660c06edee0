"""``python -m closedloop``: the command line."""

from closedloop.cli import main

if __name__ == "__main__":
    main()
