"""`python -m bot` == `aidraw run`."""

from __future__ import annotations

import sys

from bot.cli import main

sys.exit(main(["run", *sys.argv[1:]]))
