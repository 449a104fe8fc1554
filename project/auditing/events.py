"""The audit event vocabulary of DICOM PS3.15 A.5.3 (Audit Message Definitions), as constants.

Each code is a (code value, code meaning) pair of the DCM coding scheme (PS3.16 Annex D): the
EventID of PS3.16 CID 400 (Audit Event ID), the EventTypeCode of CID 401 (Audit Event Type Code)
and of CID 403 (Security Alert Type Code).  Only the codes this engine can emit are listed; the
code value is what :mod:`audit.models` stores, so the syslog export can render the message.
"""

from __future__ import annotations

from typing import NamedTuple


class Code(NamedTuple):
    """A coded entry: CodeValue (0008,0100) and CodeMeaning (0008,0104), scheme DCM."""

    value: str
    meaning: str

    def __str__(self) -> str:
        return self.value


# --- EventID (PS3.16 CID 400), one per message definition of PS3.15 A.5.3 -----------------------
APPLICATION_ACTIVITY = Code("110100", "Application Activity")  # A.5.3.1: start / stop of a process
AUDIT_LOG_USED = Code("110101", "Audit Log Used")  # A.5.3.2: the trail itself read or purged
INSTANCES_ACCESSED = Code("110103", "DICOM Instances Accessed")  # A.5.3.6: images read, changed, deleted
INSTANCES_TRANSFERRED = Code("110104", "DICOM Instances Transferred")  # A.5.3.7: C-STORE in or out
EXPORT = Code("110106", "Export")  # A.5.3.4: data leaving the engine (report to the EHR, study to the VNA)
IMPORT = Code("110107", "Import")  # A.5.3.5: data entering the engine (an HL7 order message)
ORDER_RECORD = Code("110109", "Order Record")  # A.5.3.13: an order created, read, changed
PATIENT_RECORD = Code("110110", "Patient Record")  # A.5.3.14: a patient created, read, changed, merged
PROCEDURE_RECORD = Code("110111", "Procedure Record")  # A.5.3.15: a procedure step or report
QUERY = Code("110112", "Query")  # A.5.3.10: an MWL C-FIND, a search
SECURITY_ALERT = Code("110113", "Security Alert")  # A.5.3.11: refusals, configuration changes
USER_AUTHENTICATION = Code("110114", "User Authentication")  # A.5.3.12: login, logout

EVENT_IDS = {
    c.value: c
    for c in (
        APPLICATION_ACTIVITY, AUDIT_LOG_USED, INSTANCES_ACCESSED, INSTANCES_TRANSFERRED, EXPORT, IMPORT,
        ORDER_RECORD, PATIENT_RECORD, PROCEDURE_RECORD, QUERY, SECURITY_ALERT, USER_AUTHENTICATION,
    )
}

# --- EventTypeCode ------------------------------------------------------------------------------
# Application Activity (A.5.3.1) and User Authentication (A.5.3.12): PS3.16 CID 401.
APPLICATION_START = Code("110120", "Application Start")
APPLICATION_STOP = Code("110121", "Application Stop")
LOGIN = Code("110122", "Login")
LOGOUT = Code("110123", "Logout")
# Security Alert (A.5.3.11): PS3.16 CID 403, the types an engine like this one can observe.
NODE_AUTHENTICATION = Code("110126", "Node Authentication")  # a peer refused (AE title, sender, TLS)
EMERGENCY_OVERRIDE_STARTED = Code("110127", "Emergency Override Started")
NETWORK_CONFIGURATION = Code("110128", "Network Configuration")  # DICOM nodes, HL7 senders changed
SECURITY_CONFIGURATION = Code("110129", "Security Configuration")  # certificates, keys
SOFTWARE_CONFIGURATION = Code("110131", "Software Configuration")
USE_OF_RESTRICTED_FUNCTION = Code("110132", "Use of Restricted Function")  # a page or API denied
AUDIT_RECORDING_STOPPED = Code("110133", "Audit Recording Stopped")
AUDIT_RECORDING_STARTED = Code("110134", "Audit Recording Started")
OBJECT_SECURITY_ATTRIBUTES_CHANGED = Code("110135", "Object Security Attributes Changed")
SECURITY_ROLES_CHANGED = Code("110136", "Security Roles Changed")  # groups / roles of an account
USER_SECURITY_ATTRIBUTES_CHANGED = Code("110137", "User security Attributes Changed")  # password, lockout
EMERGENCY_OVERRIDE_STOPPED = Code("110138", "Emergency Override Stopped")

EVENT_TYPES = {
    c.value: c
    for c in (
        APPLICATION_START, APPLICATION_STOP, LOGIN, LOGOUT, NODE_AUTHENTICATION, EMERGENCY_OVERRIDE_STARTED,
        NETWORK_CONFIGURATION, SECURITY_CONFIGURATION, SOFTWARE_CONFIGURATION, USE_OF_RESTRICTED_FUNCTION,
        AUDIT_RECORDING_STOPPED, AUDIT_RECORDING_STARTED, OBJECT_SECURITY_ATTRIBUTES_CHANGED,
        SECURITY_ROLES_CHANGED, USER_SECURITY_ATTRIBUTES_CHANGED, EMERGENCY_OVERRIDE_STOPPED,
    )
}

# --- EventActionCode (PS3.15 A.5.1, RFC 3881 5.1.2) --------------------------------------------
CREATE = "C"
READ = "R"  # read, viewed, printed, queried
UPDATE = "U"
DELETE = "D"
EXECUTE = "E"  # an application function performed (login, start, a transfer)
ACTIONS = {CREATE: "Create", READ: "Read", UPDATE: "Update", DELETE: "Delete", EXECUTE: "Execute"}

# --- EventOutcomeIndicator (PS3.15 A.5.1, RFC 3881 5.1.4) --------------------------------------
SUCCESS = 0
MINOR_FAILURE = 4  # the action was not completed as asked (e.g. a query answered in part)
SERIOUS_FAILURE = 8  # the action was refused or failed
MAJOR_FAILURE = 12  # the action made the engine unavailable
OUTCOMES = {SUCCESS: "Success", MINOR_FAILURE: "Minor failure", SERIOUS_FAILURE: "Serious failure",
            MAJOR_FAILURE: "Major failure"}

# --- Who acted (ActiveParticipant UserID, PS3.15 A.5.2) ----------------------------------------
USER = "user"  # a person: the account's user name
DICOM = "dicom"  # a DICOM peer: its AE title (UserID is the AE title, A.5.2.3)
HL7 = "hl7"  # an HL7 peer: sending application ^ facility (MSH-3^MSH-4)
SYSTEM = "system"  # the engine itself: a process or periodic task
ACTOR_KINDS = (USER, DICOM, HL7, SYSTEM)


def code_value(code: Code | str, known: dict[str, Code], what: str) -> str:
    """The stored code value of ``code`` (a :class:`Code` or its value); a ValueError names ``what``
    when the value is not in ``known``."""
    value = code.value if isinstance(code, Code) else str(code)
    if value not in known:
        raise ValueError(f"{what} {value!r} is not one of {sorted(known)}")
    return value
