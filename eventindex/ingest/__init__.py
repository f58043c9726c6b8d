"""Filling the catalogue: the pseudo-data generator (``generator``, needs numpy: the
``generate`` extra) and the loader (``source`` -> ``loader``, or ``sharded`` on a
coordinator; ``command`` is its command line, ``eventindex load``)."""
