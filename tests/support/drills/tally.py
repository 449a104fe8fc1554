"""After a drill: what every client was told, compared with what the database, the image store,
the VNA and the sinks hold.  Every "must be 0" column is a broken promise when it is not 0.

Read with SQL on the engine's database (a second client, as an auditor would: nothing of the
engine's code runs here), Orthanc's REST API, the files of the store, and the sinks' records.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pydicom
import requests

#: (key, label, must be zero) in table order.
COLUMNS = (
    ("hl7_aa", "HL7 messages answered AA", False),
    ("hl7_aa_not_applied_once", "answered AA, not applied exactly once", True),
    ("hl7_resent_after_lost_ack", "resent after a lost ACK (same MSH-10)", False),
    ("hl7_resend_duplicates", "resends that created a duplicate", True),
    ("mwl_answered", "MWL queries answered (findscu, one per exam)", False),
    ("mwl_answered_without_order", "MWL answered Success without the order answered AA", True),
    ("mpps_success", "MPPS N-CREATE / N-SET answered Success", False),
    ("mpps_success_not_stored", "MPPS answered Success, not stored so", True),
    ("dicom_success", "DICOM instances answered Success", False),
    ("dicom_success_missing", "answered Success, missing or unreadable", True),
    ("vna_more_than_once", "instances in the VNA more than once", True),
    ("vna_committed_missing", "committed, missing from the VNA", True),
    ("vna_success_not_archived", "answered Success, not in the VNA after the drain", True),
    ("reports_signed", "reports signed", False),
    ("oru_not_exactly_once", "signed, ORU not delivered exactly once (per destination)", True),
    ("oru_out_of_order", "ORU delivered out of order for its patient", True),
    ("oru_same_msh10_redelivered", "ORU received again with the same MSH-10 (receiver dedupes)", False),
    ("drain_seconds", "seconds to drain after the last fault", False),
    ("unexpected_exits", "engine processes that exited on their own (restarted, as compose does)", False),
    ("peer_exits", "VNA (Orthanc) exits nobody caused (restarted)", False),
)


@dataclass
class Tally:
    figures: dict[str, float | int] = field(default_factory=dict)
    details: dict[str, list[str]] = field(default_factory=dict)

    def losses(self) -> dict[str, int]:
        """The must-be-zero columns that are not zero."""
        return {key: self.figures.get(key, 0) for key, _, must_be_zero in COLUMNS
                if must_be_zero and self.figures.get(key, 0)}

    def note(self, key: str, what: str) -> None:
        self.details.setdefault(key, [])
        if len(self.details[key]) < 20:
            self.details[key].append(what)


def count_hl7(tally: Tally, db: psycopg.Connection, outcomes) -> None:
    aa = [o for o in outcomes if o.final == "AA"]
    tally.figures["hl7_aa"] = len(aa)
    tally.figures["hl7_resent_after_lost_ack"] = sum(1 for o in outcomes if o.resent_after_lost_ack)
    inbound = Counter()
    for _app, _fac, control_id, status in db.execute(
            "SELECT sending_application, sending_facility, message_control_id, status "
            "FROM hl7gateway_inboundmessage WHERE replay_of_id IS NULL"):
        if status == "APPLIED":
            inbound[control_id] += 1
    orders = Counter(row[0] for row in db.execute("SELECT placer_order_number FROM ris_order"))
    accessions = Counter(row[0] for row in db.execute("SELECT accession_number FROM ris_requestedprocedure"))
    not_once = 0
    for o in aa:
        m = o.message
        if inbound[m.control_id] != 1 or orders[m.placer] != 1 or any(accessions[a] != 1 for a in m.accessions):
            not_once += 1
            tally.note("hl7_aa_not_applied_once", f"{m.control_id}: log rows {inbound[m.control_id]}, "
                       f"orders {orders[m.placer]}, procedures {[accessions[a] for a in m.accessions]}")
    tally.figures["hl7_aa_not_applied_once"] = not_once
    # A resend that became a second order (a new placer number cannot come from a resend, but a
    # second log row applied under the same key, or a second order row, would).
    duplicates = sum(1 for n in inbound.values() if n > 1) + sum(1 for n in orders.values() if n > 1)
    tally.figures["hl7_resend_duplicates"] = duplicates


def count_worklist(tally: Tally, studies) -> None:
    """Each exam's worklist query came after its order was answered AA: a Success answer must
    hold the order's scheduled step (PS3.4 K.6.1.2; persist before acknowledging)."""
    answered = [s for s in studies if s.mwl_answered]
    tally.figures["mwl_answered"] = len(answered)
    without = [s for s in answered if not s.mwl_found]
    for s in without:
        tally.note("mwl_answered_without_order", s.accession)
    tally.figures["mwl_answered_without_order"] = len(without)


def count_mpps(tally: Tally, db: psycopg.Connection, studies) -> None:
    """An N-CREATE answered Success (or 0111 duplicate to its resend) is an MPPS IN PROGRESS or
    later in the database; an N-SET COMPLETED answered Success (or A710 to its resend) is
    COMPLETED there (PS3.4 F.7.2)."""
    status = dict(db.execute("SELECT sop_instance_uid, status FROM pacs_performedprocedurestep"))
    told = not_stored = 0
    for s in studies:
        told += (s.mpps_created == "Success") + (s.mpps_completed == "Success")
        problem = ""
        if s.mpps_created and s.mpps_uid not in status:
            problem = f"created ({s.mpps_created}), not in the database"
        elif s.mpps_completed and status.get(s.mpps_uid) != "COMPLETED":
            problem = f"completed ({s.mpps_completed}), stored {status.get(s.mpps_uid)!r}"
        if problem:
            not_stored += 1
            tally.note("mpps_success_not_stored", f"{s.mpps_uid}: {problem}")
    tally.figures["mpps_success"] = told
    tally.figures["mpps_success_not_stored"] = not_stored


def count_dicom(tally: Tally, db: psycopg.Connection, studies, storage_dir: Path) -> set[str]:
    success = {uid for s in studies for uid in s.success}
    tally.figures["dicom_success"] = len(success)
    rows = defaultdict(list)
    for uid, path in db.execute("SELECT sop_instance_uid, path FROM pacs_instance"):
        rows[uid].append(path)
    missing = 0
    for uid in sorted(success):
        paths = rows.get(uid, [])
        problem = ""
        if len(paths) != 1:
            problem = f"{len(paths)} index rows"
        else:
            try:
                ds = pydicom.dcmread(storage_dir / paths[0])
                if ds.SOPInstanceUID != uid or len(ds.PixelData) == 0:
                    problem = "file holds another instance or no pixels"
            except Exception as exc:  # noqa: BLE001 - any reading failure is the finding
                problem = f"unreadable: {type(exc).__name__}"
        if problem:
            missing += 1
            tally.note("dicom_success_missing", f"{uid}: {problem}")
    tally.figures["dicom_success_missing"] = missing
    return success


def count_vna(tally: Tally, db: psycopg.Connection, orthanc_url: str, success: set[str]) -> None:
    in_vna = Counter()
    for oid in requests.get(f"{orthanc_url}/instances", timeout=60).json():
        tags = requests.get(f"{orthanc_url}/instances/{oid}/simplified-tags", timeout=60).json()
        in_vna[tags["SOPInstanceUID"]] += 1
    tally.figures["vna_more_than_once"] = sum(1 for n in in_vna.values() if n > 1)
    committed = [row[0] for row in db.execute(
        "SELECT i.sop_instance_uid FROM pacs_transferitem ti JOIN pacs_instance i ON i.id = ti.instance_id "
        "WHERE ti.status = 'COMMITTED'")]
    missing = [uid for uid in committed if not in_vna[uid]]
    for uid in missing:
        tally.note("vna_committed_missing", uid)
    tally.figures["vna_committed_missing"] = len(missing)
    not_archived = sorted(uid for uid in success if not in_vna[uid])
    for uid in not_archived:
        tally.note("vna_success_not_archived", uid)
    tally.figures["vna_success_not_archived"] = len(not_archived)


def count_oru(tally: Tally, signed, sinks: dict) -> None:
    """Each signed final report: exactly one ORU^R01 per destination answered AA (identified by
    OBR-18 and OBR-25 = F; HL7 v2.5.1 7.4.1), no second ORU under another MSH-10, and per
    patient in the order they were signed."""
    tally.figures["reports_signed"] = len(signed)
    not_once = out_of_order = redelivered = 0
    for name, sink in sinks.items():
        first: dict[str, tuple[int, str]] = {}  # accession -> (index of first AA receipt, MSH-10)
        control_ids = defaultdict(set)
        seen_control = Counter()
        for index, received in enumerate(list(sink.received)):
            if received.answer != "AA":
                continue
            obr = received.segment("OBR")
            accession, status = obr[18], obr[25] if len(obr) > 25 else ""
            if status != "F":
                continue
            control_ids[accession].add(received.control_id)
            seen_control[received.control_id] += 1
            first.setdefault(accession, (index, received.control_id))
        redelivered += sum(n - 1 for n in seen_control.values() if n > 1)
        for report in signed:
            ids = control_ids.get(report.accession, set())
            if len(ids) != 1:
                not_once += 1
                tally.note("oru_not_exactly_once", f"{name}: {report.accession} under {len(ids)} MSH-10s")
        by_patient = defaultdict(list)
        for report in sorted(signed, key=lambda r: r.sequence):
            by_patient[report.patient_id].append(report)
        for patient, reports in by_patient.items():
            positions = [first[r.accession][0] for r in reports if r.accession in first]
            if positions != sorted(positions):
                out_of_order += 1
                tally.note("oru_out_of_order", f"{name}: patient {patient}")
    tally.figures["oru_not_exactly_once"] = not_once
    tally.figures["oru_out_of_order"] = out_of_order
    tally.figures["oru_same_msh10_redelivered"] = redelivered


def table(tally: Tally) -> str:
    lines = ["| figure | count | must be 0 |", "|---|---:|:---:|"]
    for key, label, must_be_zero in COLUMNS:
        value = tally.figures.get(key, "-")
        lines.append(f"| {label} | {value} | {'yes' if must_be_zero else ''} |")
    return "\n".join(lines)
