"""``python -m cropcore_conformance NAME``: the same as ``cropcore conformance NAME``."""

import sys

from cropcore_conformance.runner import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m cropcore_conformance"))
