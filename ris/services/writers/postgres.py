"""The PostgreSQL reader and writer of patient and order plans: few statements, all prepared
(``ris.services.pg``).

A new order (NW, the hot path of the HL7 intake) takes two statements for a known patient: one
lookup (order already there? patient and visit by identifier, the other PID-3 identifiers held,
accession numbers and Study Instance UIDs already used, new accession numbers from the
sequence) and one INSERT chain (visit, order, requested procedures, scheduled steps).  A patient
seen for the first time adds its advisory lock and one INSERT (patient and identifier); changed
demographics or PV1 fields one UPDATE each.  A merged patient (rare) is resolved through the
ORM reader.  Same plans, same rows and audit records as ``ris.services.writers.orm``.
"""

from __future__ import annotations

from django.utils import timezone

from ris import states
from ris.commands import OrderCommand, PatientData, VisitData
from ris.models import Patient, Visit
from ris.services import identifiers, pg, plans
from ris.services.writers import orm
from ris.services.writers.base import Conflict, lock_identity

# --- Reading ----------------------------------------------------------------------------------

# The patient of the primary identifier (not following a merge), its visit with the command's
# number, and the positions (1-based) of the other identifiers that some patient holds.
_PATIENT_COLUMNS = """
  p.id, p.merged_into_id, p.patient_name, p.patient_birth_date, p.patient_sex,
  v.id, v.patient_class, v.assigned_location, v.referring_physician_name, v.admit_datetime,
  ARRAY(SELECT k.n FROM unnest(%(extra_ids)s::varchar[], %(extra_authorities)s::varchar[]) WITH ORDINALITY
                        AS k(id_number, authority, n)
        WHERE EXISTS (SELECT 1 FROM ris_patientidentifier x
                      WHERE x.id_number = k.id_number AND x.assigning_authority = k.authority))"""

_PATIENT_FROM = """
FROM (SELECT 1) AS one
LEFT JOIN ris_patientidentifier i ON i.id_number = %(id_number)s AND i.assigning_authority = %(authority)s
LEFT JOIN ris_patient p ON p.id = i.patient_id
LEFT JOIN ris_visit v ON v.patient_id = p.id AND v.visit_number = %(visit_number)s
"""

_PG_PATIENT_LOOKUP = f"SELECT {_PATIENT_COLUMNS}{_PATIENT_FROM}"

_PG_LOOKUP = f"""
SELECT {_PATIENT_COLUMNS},
  (%(placer)s::text <> '' AND EXISTS (SELECT 1 FROM ris_order WHERE placer_order_number <> ''
                                 AND placer_namespace = %(namespace)s AND placer_order_number = %(placer)s))
  OR (%(filler)s::text <> '' AND EXISTS (SELECT 1 FROM ris_order WHERE filler_order_number <> ''
                                    AND filler_order_number = %(filler)s)),
  ARRAY(SELECT accession_number FROM ris_requestedprocedure WHERE accession_number = ANY(%(accessions)s::varchar[])),
  ARRAY(SELECT study_instance_uid FROM ris_requestedprocedure
        WHERE study_instance_uid = ANY(%(uids)s::varchar[])),
  ARRAY(SELECT nextval('{identifiers.ACCESSION_SEQUENCE}') FROM generate_series(1, %(assign)s::int))
{_PATIENT_FROM}"""


def _patient_params(data: PatientData, visit: VisitData | None) -> dict:
    return {
        "id_number": data.primary.id_number, "authority": data.primary.assigning_authority,
        "visit_number": visit.visit_number if visit else "",
        "extra_ids": [i.id_number for i in data.identifiers[1:]],
        "extra_authorities": [i.assigning_authority for i in data.identifiers[1:]],
    }


def _patient_seen(row, data: PatientData, visit: VisitData | None) -> plans.PatientSeen:
    (pk, merged_into, name, birth_date, sex, visit_pk, patient_class, location, referring, admit, known) = row
    if merged_into is not None:
        return orm.read_patient(data, visit)
    extra = data.identifiers[1:]
    held = frozenset((extra[n - 1].id_number, extra[n - 1].assigning_authority) for n in known)
    if pk is None:
        return plans.PatientSeen(known_identifiers=held)
    seen_visit = None
    if visit is not None and visit_pk is not None:
        seen_visit = plans.VisitSeen(visit_pk, patient_class, location, referring, admit)
    return plans.PatientSeen(pk, name, birth_date, sex, visit=seen_visit, known_identifiers=held)


def read_patient(data: PatientData, visit: VisitData | None) -> plans.PatientSeen:
    with pg.cursor() as cursor:
        cursor.execute(_PG_PATIENT_LOOKUP, _patient_params(data, visit))
        row = cursor.fetchone()
    return _patient_seen(row, data, visit)


def read_new_order(cmd: OrderCommand) -> plans.OrderSeen:
    procs = cmd.procedures
    with pg.cursor() as cursor:
        cursor.execute(_PG_LOOKUP, {
            **_patient_params(cmd.patient, cmd.visit),
            "placer": cmd.placer_order_number, "namespace": cmd.placer_namespace, "filler": cmd.filler_order_number,
            "accessions": [p.accession_number for p in procs if p.accession_number],
            "uids": [p.study_instance_uid for p in procs if p.study_instance_uid],
            "assign": plans.numbers_needed(procs),
        })
        row = cursor.fetchone()
    exists, used_accessions, used_uids, numbers = row[11:]
    if exists:
        return plans.OrderSeen(plans.PatientSeen(), order_exists=True)
    return plans.OrderSeen(_patient_seen(row[:11], cmd.patient, cmd.visit), used_accessions=frozenset(used_accessions),
                           used_uids=frozenset(used_uids), numbers=list(numbers))


# --- Writing ----------------------------------------------------------------------------------

# A new patient with its primary identifier, unless another connection registered it meanwhile
# (the caller holds the identifier's advisory lock).  Every NOT NULL column is listed (tests
# compare with the models).
_PG_CREATE = """
WITH found AS (
  SELECT patient_id FROM ris_patientidentifier WHERE id_number = %(id_number)s AND assigning_authority = %(authority)s
), p AS (
  INSERT INTO ris_patient (patient_name, patient_birth_date, patient_sex, merged_into_id, patient_weight,
                           medical_alerts, allergies, pregnancy_status, created_at, updated_at)
  SELECT %(name)s::varchar, %(birth_date)s::date, %(sex)s::varchar, NULL, NULL, '', '', NULL,
         %(now)s::timestamptz, %(now)s::timestamptz
  WHERE NOT EXISTS (SELECT 1 FROM found)
  RETURNING id
), i AS (
  INSERT INTO ris_patientidentifier (patient_id, id_number, assigning_authority, identifier_type_code)
  SELECT id, %(id_number)s::varchar, %(authority)s::varchar, %(type_code)s::varchar FROM p
)
SELECT (SELECT id FROM p)
"""

# The other PID-3 identifiers of the plan; one another connection added meanwhile stays its own.
_PG_IDENTIFIERS = """
INSERT INTO ris_patientidentifier (patient_id, id_number, assigning_authority, identifier_type_code)
SELECT %(patient)s::bigint, d.id_number, d.authority, d.type_code
FROM unnest(%(ids)s::varchar[], %(authorities)s::varchar[], %(type_codes)s::varchar[]) WITH ORDINALITY
     AS d(id_number, authority, type_code, n)
ORDER BY d.n
ON CONFLICT (assigning_authority, id_number) DO NOTHING
"""

# Every NOT NULL column of the four tables is listed (tests compare with the models).
_PG_INSERT = """
WITH v AS (
  INSERT INTO ris_visit (patient_id, visit_number, patient_class, assigned_location, referring_physician_name,
                         admit_datetime, created_at, updated_at)
  SELECT %(patient)s::bigint, %(visit_number)s::varchar, %(patient_class)s::varchar, %(assigned_location)s::varchar,
         %(visit_referring)s::varchar, %(admit)s::timestamptz, %(now)s::timestamptz, %(now)s::timestamptz
  WHERE %(new_visit)s::boolean
  RETURNING id
), o AS (
  INSERT INTO ris_order (patient_id, visit_id, placer_order_number, placer_namespace, filler_order_number,
                         order_control, order_status, ordering_provider, referring_physician_name,
                         reason_for_study, sending_application, sending_facility, created_by_filler,
                         created_at, updated_at)
  VALUES (%(patient)s::bigint, COALESCE((SELECT id FROM v), %(visit)s::bigint), %(placer)s, %(namespace)s, %(filler)s,
          %(order_control)s, %(order_status)s, %(ordering_provider)s, %(referring)s, %(reason)s,
          %(sending_application)s, %(sending_facility)s, false, %(now)s, %(now)s)
  RETURNING id
), rp AS (
  INSERT INTO ris_requestedprocedure (order_id, requested_procedure_id, requested_procedure_description,
                                      procedure_code_value, procedure_code_scheme, procedure_code_meaning,
                                      requested_procedure_priority, study_instance_uid, accession_number,
                                      accession_number_issuer, accession_assigned_by_us, status,
                                      placer_status, placer_status_at, placer_status_cause, created_at, updated_at)
  SELECT o.id, d.rp_id, d.description, d.code_value, d.code_scheme, d.code_meaning, d.priority, d.uid, d.accession,
         d.issuer, d.assigned, %(rp_status)s::varchar, '', NULL, '', %(now)s::timestamptz, %(now)s::timestamptz
  FROM o, unnest(%(rp_ids)s::varchar[], %(descriptions)s::varchar[], %(code_values)s::varchar[],
                 %(code_schemes)s::varchar[], %(code_meanings)s::varchar[], %(priorities)s::varchar[],
                 %(rp_uids)s::varchar[], %(rp_accessions)s::varchar[], %(issuers)s::varchar[],
                 %(assigned)s::boolean[]) WITH ORDINALITY
       AS d(rp_id, description, code_value, code_scheme, code_meaning, priority, uid, accession, issuer, assigned, n)
  ORDER BY d.n
  RETURNING id, accession_number
), s AS (
  INSERT INTO ris_scheduledprocedurestep (requested_procedure_id, scheduled_procedure_step_id, modality,
                                          scheduled_station_ae_title, scheduled_station_name,
                                          scheduled_procedure_step_location, scheduled_start,
                                          scheduled_performing_physician_name, scheduled_procedure_step_description,
                                          protocol_code_value, protocol_code_scheme, protocol_code_meaning, status,
                                          created_at, updated_at)
  SELECT rp.id, d.sps_id, d.modality, d.ae, d.station, d.location, d.start, '', d.description, d.pc_value,
         d.pc_scheme, d.pc_meaning, %(sps_status)s::varchar, %(now)s::timestamptz, %(now)s::timestamptz
  FROM unnest(%(s_accessions)s::varchar[], %(sps_ids)s::varchar[], %(modalities)s::varchar[], %(aes)s::varchar[],
              %(stations)s::varchar[], %(locations)s::varchar[], %(starts)s::timestamptz[],
              %(s_descriptions)s::varchar[], %(pc_values)s::varchar[], %(pc_schemes)s::varchar[],
              %(pc_meanings)s::varchar[]) WITH ORDINALITY
       AS d(accession, sps_id, modality, ae, station, location, start, description, pc_value, pc_scheme,
            pc_meaning, n)
  JOIN rp ON rp.accession_number = d.accession
  ORDER BY d.n
  RETURNING 1
)
SELECT (SELECT id FROM o), (SELECT count(*) FROM s),
       ARRAY(SELECT rp.id FROM rp JOIN unnest(%(rp_accessions)s::varchar[]) WITH ORDINALITY AS a(accession, n)
             ON rp.accession_number = a.accession ORDER BY a.n)
"""

# Plan key -> chain parameter, for the requested procedures and the scheduled steps.
_RP_PARAMS = (("rp_ids", "requested_procedure_id"), ("descriptions", "requested_procedure_description"),
              ("code_values", "procedure_code_value"), ("code_schemes", "procedure_code_scheme"),
              ("code_meanings", "procedure_code_meaning"), ("priorities", "requested_procedure_priority"),
              ("rp_uids", "study_instance_uid"), ("rp_accessions", "accession_number"),
              ("issuers", "accession_number_issuer"), ("assigned", "accession_assigned_by_us"))
_STEP_PARAMS = (("sps_ids", "scheduled_procedure_step_id"), ("modalities", "modality"),
                ("aes", "scheduled_station_ae_title"), ("stations", "scheduled_station_name"),
                ("locations", "scheduled_procedure_step_location"), ("starts", "scheduled_start"),
                ("s_descriptions", "scheduled_procedure_step_description"), ("pc_values", "protocol_code_value"),
                ("pc_schemes", "protocol_code_scheme"), ("pc_meanings", "protocol_code_meaning"))


def _patient_rows(plan: plans.PatientPlan) -> int:
    if plan.create:
        lock_identity(plan.primary)
        with pg.cursor() as cursor:
            cursor.execute(_PG_CREATE, {
                "id_number": plan.primary.id_number, "authority": plan.primary.assigning_authority,
                "type_code": plan.primary.identifier_type_code, "name": plan.values["patient_name"],
                "birth_date": plan.values["patient_birth_date"], "sex": plan.values["patient_sex"],
                "now": timezone.now(),
            })
            pk = cursor.fetchone()[0]
        if pk is None:
            raise Conflict(f"patient {plan.primary} was registered meanwhile")
    else:
        pk = plan.pk
        if plan.values:
            Patient.objects.filter(pk=pk).update(**plan.values, updated_at=timezone.now())
    if plan.add_identifiers:
        with pg.cursor() as cursor:
            cursor.execute(_PG_IDENTIFIERS, {
                "patient": pk, "ids": [i.id_number for i in plan.add_identifiers],
                "authorities": [i.assigning_authority for i in plan.add_identifiers],
                "type_codes": [i.identifier_type_code for i in plan.add_identifiers],
            })
    return pk


def _update_visit(plan: plans.VisitPlan | None) -> None:
    if plan is not None and plan.pk is not None and plan.values:
        Visit.objects.filter(pk=plan.pk).update(**plan.values, updated_at=timezone.now())


def write_patient(plan: plans.PatientPlan, visit: plans.VisitPlan | None) -> tuple[int, int | None]:
    """The patient and its visit; returns their keys."""
    patient_pk = _patient_rows(plan)
    visit_pk = None
    if visit is not None:
        _update_visit(visit)
        visit_pk = visit.pk
        if visit_pk is None:
            visit_pk = Visit.objects.create(patient_id=patient_pk, visit_number=visit.visit_number,
                                            **visit.values).pk
    for record in plan.audits:
        record.record()
    return patient_pk, visit_pk


def write_new_order(plan: plans.OrderPlan) -> dict:
    patient_pk = _patient_rows(plan.patient)
    visit = plan.visit
    _update_visit(visit)
    new_visit = visit is not None and visit.pk is None
    visit_values = visit.values if new_visit else {}
    params = {key: [p.values[name] for p in plan.procedures] for key, name in _RP_PARAMS}
    params.update({key: [step[name] for p in plan.procedures for step in p.steps] for key, name in _STEP_PARAMS})
    params["s_accessions"] = [p.values["accession_number"] for p in plan.procedures for _ in p.steps]
    order = plan.values
    with pg.cursor() as cursor:
        cursor.execute(_PG_INSERT, {
            **params, "now": timezone.now(), "patient": patient_pk, "visit": visit.pk if visit else None,
            "new_visit": new_visit, "visit_number": visit.visit_number if visit else "",
            "patient_class": visit_values.get("patient_class", ""),
            "assigned_location": visit_values.get("assigned_location", ""),
            "visit_referring": visit_values.get("referring_physician_name", ""),
            "admit": visit_values.get("admit_datetime"),
            "placer": order["placer_order_number"], "namespace": order["placer_namespace"],
            "filler": order["filler_order_number"], "order_control": order["order_control"],
            "order_status": order["order_status"], "ordering_provider": order["ordering_provider"],
            "referring": order["referring_physician_name"], "reason": order["reason_for_study"],
            "sending_application": order["sending_application"], "sending_facility": order["sending_facility"],
            "rp_status": states.RP_SCHEDULED, "sps_status": states.SPS_SCHEDULED,
        })
        order_pk, _, procedure_pks = cursor.fetchone()
    for record in plan.audits:
        record.record()
    return {"order": order_pk, "patient": patient_pk, "procedures": list(procedure_pks)}
