"""A real Audit Record Repository for tests: Debian's rsyslogd with a configuration of its own.

    repo = Rsyslog(tmp_path, tls=pki_files_or_None)   # plain: imtcp + imudp; tls: imtcp with gtls
    repo.start()
    repo.tcp_port, repo.udp_port
    repo.wait_for(3)    # the first three messages received, parsed by rsyslog
    repo.stop(); repo.start()   # the same ports again

Every message whose MSGID is IHE+RFC-3881 (or APP-NAME ``readiness``, the probe that tells when
the UDP input is up) is written as one line: rsyslog's own parse of the RFC 5424 header fields,
then the raw message as rsyslog framed it out of the stream.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.net import free_port

RSYSLOGD = "/usr/sbin/rsyslogd"
SEPARATOR = "\x1f"  # a unit separator: appears in no header field and no XML we send
FIELDS = ("pri", "version", "timestamp", "hostname", "app_name", "procid", "msgid", "structured_data", "raw")


@dataclass(frozen=True)
class Received:
    pri: str
    version: str
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    structured_data: str
    raw: bytes


@dataclass(frozen=True)
class TLSFiles:
    ca: Path
    chain: Path
    key: Path


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Rsyslog:
    def __init__(self, directory: Path, tls: TLSFiles | None = None):
        if not os.path.exists(RSYSLOGD):
            pytest.fail("rsyslog is not installed (apt-get install rsyslog rsyslog-gnutls; make test does it)")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.tls = tls
        self.tcp_port = free_port()
        self.udp_port = None if tls else _free_udp_port()
        self.output = self.directory / "received.log"
        self.process: subprocess.Popen | None = None
        self._write_config()

    def _write_config(self) -> None:
        template = SEPARATOR.join(["%pri%", "%protocol-version%", "%timereported:::date-rfc3339%", "%hostname%",
                                   "%app-name%", "%procid%", "%msgid%", "%structured-data%", "%rawmsg%"])
        lines = [f'global(workDirectory="{self.directory}" maxMessageSize="256k"']
        if self.tls:
            lines += [f'  defaultNetstreamDriverCAFile="{self.tls.ca}"',
                      f'  defaultNetstreamDriverCertFile="{self.tls.chain}"',
                      f'  defaultNetstreamDriverKeyFile="{self.tls.key}"']
        lines[-1] += ")"
        if self.tls:
            lines.append('module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")')
        else:
            lines += ['module(load="imtcp")', 'module(load="imudp")',
                      f'input(type="imudp" port="{self.udp_port}" address="127.0.0.1")']
        lines += [
            f'input(type="imtcp" port="{self.tcp_port}" address="127.0.0.1")',
            f'template(name="fields" type="string" string="{template}\\n")',
            'if $msgid == "IHE+RFC-3881" or $app-name == "readiness" then {',
            f'  action(type="omfile" file="{self.output}" template="fields")',
            '}',
        ]
        self.config = self.directory / "rsyslog.conf"
        self.config.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        self.stderr = open(self.directory / "rsyslogd.err", "ab")
        self.process = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(self.config), "-i", str(self.directory / "rsyslogd.pid")],
            stdout=self.stderr, stderr=self.stderr)
        deadline = time.monotonic() + 20
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"rsyslogd exited: {(self.directory / 'rsyslogd.err').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.tcp_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("rsyslogd did not listen within 20 s")
                time.sleep(0.05)
        if self.udp_port:
            self._wait_udp_ready(deadline)

    def _wait_udp_ready(self, deadline: float) -> None:
        """Probe datagrams until one is written: the UDP input is then bound and read."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            while not any(r.app_name == "readiness" for r in self.received(include_probes=True)):
                if time.monotonic() > deadline:
                    pytest.fail("rsyslogd's UDP input did not answer within 20 s")
                probe.sendto(b"<85>1 - - readiness - - - probe", ("127.0.0.1", self.udp_port))
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)
        self.process = None
        if getattr(self, "stderr", None):
            self.stderr.close()

    def received(self, include_probes: bool = False) -> list[Received]:
        if not self.output.exists():
            return []
        found = []
        # rsyslog's omfile may be caught mid-write: only lines ended by their newline are whole.
        *lines, _unfinished = self.output.read_bytes().split(b"\n")
        for line in lines:
            if not line:
                continue
            parts = line.split(SEPARATOR.encode(), len(FIELDS) - 1)
            record = Received(*[p.decode() for p in parts[:-1]], parts[-1])
            if include_probes or record.app_name != "readiness":
                found.append(record)
        return found

    def wait_for(self, count: int, timeout: float = 20) -> list[Received]:
        """The first ``count`` audit messages received, once rsyslog has written them."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.received()
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} of {count} messages received within {timeout} s")
            time.sleep(0.02)
