"""What the tests share beyond factories and fixtures: peers (dcmtk, Orthanc, an MLLP sink,
rsyslog, slapd, a Celery worker), clients of the engine's listeners, and readers of the bytes it
writes.  Test modules import from here, from ``tests.factories`` and from ``tests.conftest``'s
fixtures, never from one another."""
