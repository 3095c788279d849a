"""``python -m cropcore``: the ``cropcore`` command (see :mod:`cropcore.cli`)."""

from cropcore.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
