"""``python -m dylora.run``: the same app as ``dylora-run``."""

from dylora.cli.run import main

if __name__ == "__main__":
    main()
