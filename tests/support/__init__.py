"""What the tests share: the known catalogue and databases (``catalogue``), servers of the
service (``servers``), credentials and TLS (``auth``), the loader's command (``loading``),
and local PostgreSQL servers (``localpg``, ``pgcluster``). Fixtures stay in conftest.py."""
