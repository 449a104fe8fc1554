"""Crash and outage drills: the engine's real processes (as the Procfile starts them) on a
PostgreSQL cluster and a Redis server of the drill's own, real clients (MLLP senders, dcmtk
``storescu``, the dictation API), real peers (Orthanc as the VNA, MLLP sinks as the EHR and
billing), and faults injected at seeded random moments: ``kill -9`` of every process kind,
restarts of PostgreSQL and Redis, peers that go away and come back, a sink that answers AE.

Afterwards every promise is counted against what the systems hold (``tally``): an ACK AA
(HL7 v2.5.1 section 2.9.2, original acknowledgement mode) means the message was applied; a
C-STORE Success (PS3.4 B.2.3) means the instance is stored and readable; a storage commitment
success (PS3.4 J.3) means the VNA holds it; a signed report means its ORU^R01 reaches every
destination, once and in order per patient.

``services``: the private PostgreSQL and Redis, the engine's processes; ``traffic``: the
clients, each keeping what it was told; ``chaos``: the faults; ``tally``: the counting;
``drill``: one drill from start to table.
"""
