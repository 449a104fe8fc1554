"""Interoperability: our ORU^R01 delivered to a third-party HL7 receiver, python-hl7's asyncio MLLP
server (``hl7.mllp.start_hl7_server``), which parses each message with python-hl7 and answers with
the ACK python-hl7 builds (``Message.create_ack``, original mode, HL7 v2.5.1 2.9.2)."""

from __future__ import annotations

import asyncio
import threading

import hl7
import hl7.mllp
import pytest

from hl7gateway.models import OutboundMessage
from hl7gateway.outbox import delivery
from tests.factories import oru as h

pytestmark = pytest.mark.django_db


class PythonHl7Receiver:
    """python-hl7's MLLP server in a thread; records what it parsed."""

    def __init__(self, ack_code: str = "AA"):
        self.ack_code = ack_code
        self.parsed: list[hl7.Message] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _handle(self, reader, writer):
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                self.parsed.append(message)
                writer.writemessage(message.create_ack(self.ack_code))
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    def _run(self):
        asyncio.set_event_loop(self._loop)

        async def start():
            self._server = await hl7.mllp.start_hl7_server(self._handle, host="127.0.0.1", port=0,
                                                           encoding="utf-8", limit=1024 * 1024)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    def __enter__(self):
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc):
        def stop():
            self._server.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(stop)
        self._thread.join(10)


@pytest.mark.parametrize("version", ["2.5.1", "2.3.1"])
def test_python_hl7_receiver_parses_and_accepts(version, settings):
    settings.HL7_ORU_BATCH_SIZE = 10
    with PythonHl7Receiver() as receiver:
        h.destination("ehr", receiver.port, hl7_version=version, receiving_application="EHR")
        patient = h.patient(name="ÅNGSTRÖM^BJÖRK")
        rp, user = h.study(for_patient=patient), h.radiologist()
        h.sign_report(rp, user, "PRELIMINARY", findings="Mass 2|3 cm ^ apex & base.")
        h.sign_report(rp, user, "FINAL", findings="Mass 2|3 cm ^ apex & base.")
        rows = list(OutboundMessage.objects.order_by("id"))
        assert delivery.deliver(rows[0].pk) == "DELIVERED"
        assert delivery.deliver(rows[1].pk) == "DELIVERED"
        assert [str(m.segment("MSH")[10]) for m in receiver.parsed] == [r.message_control_id for r in rows]
        final = receiver.parsed[1]
        assert str(final.segment("MSH")[12]) == version
        assert str(final.segment("MSH")[5]) == "EHR"
        assert str(final.segment("OBR")[18]) == rp.accession_number and str(final.segment("OBR")[25]) == "F"
        assert str(final.segment("PID")[5]) == "ÅNGSTRÖM^BJÖRK"
        text = [final.unescape(str(s[5])) for s in final.segments("OBX") if str(s[2]) == "TX"]
        assert "Mass 2|3 cm ^ apex & base." in text
        # Their ACK (MSA-2 = our MSH-10) is what settled each message.
        for row in rows:
            attempt = row.attempts.get()
            assert attempt.outcome == "AA" and f"MSA|AA|{row.message_control_id}".encode() in bytes(attempt.ack)


def test_python_hl7_receiver_rejecting(settings):
    with PythonHl7Receiver(ack_code="AR") as receiver:
        h.destination("ehr", receiver.port)
        h.sign_report(h.study(), h.radiologist())
        row = OutboundMessage.objects.get()
        assert delivery.deliver(row.pk) == "FAILED"
        assert len(receiver.parsed) == 1
