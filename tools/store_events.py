"""``python -m tools.store_events``: the loader's command line from a checkout (the same as
``eventindex load``; the engine is ``eventindex.ingest``)."""

from __future__ import annotations

import sys

from eventindex.ingest.command import main

if __name__ == "__main__":
    sys.exit(main())
