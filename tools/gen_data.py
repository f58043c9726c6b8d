"""``python -m tools.gen_data``: the pseudo-data generator from a checkout (the same as
``eventindex generate``; the generator is ``eventindex.ingest.generator``)."""

from __future__ import annotations

import sys

from eventindex.ingest.generator import main

if __name__ == "__main__":
    sys.exit(main())
