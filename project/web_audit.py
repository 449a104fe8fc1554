"""The audit trail of the web pages, the API and the admin: who looked at or changed which
patient's data, from where (DICOM PS3.15 A.5.3, IHE ATNA; the table of which page writes which
event is in README.md, "Audit trail").

- :class:`AuditActorMiddleware` makes the signed-in user the actor of every change a request
  causes (``ris.auditing.acting``), so the domain services record who changed what.
- :func:`read` records that a page or API answer showed patient data (``record_soon``: off the
  request's critical path; action R).
- :class:`AuditedAdmin` does both for the admin's change list, change view, save and delete.

The client address is ``project.https.client_address``: the connection's, or, behind proxies in
``WEB_TRUSTED_PROXIES``, the nearest address in ``X-Forwarded-For`` that none of them is.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings

from audit import events, trail
from project import https
from ris import auditing


def client_address(request) -> str:
    """Where the request came from, by the one rule of ``project.https.client_address`` (the sign-in
    lockouts count by the same address)."""
    return https.client_address(request)


def actor_name(request) -> str:
    user = getattr(request, "user", None)
    return user.get_username() if user is not None and user.is_authenticated else ""


class AuditActorMiddleware:
    """The signed-in user (from the client address) acts in every change the request makes."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        name = actor_name(request)
        if not name:
            return self.get_response(request)
        with auditing.acting(name, events.USER, source_address=client_address(request)):
            return self.get_response(request)


def read(request, event_id, *, patients: Iterable[tuple[str, str]] = (), objects: Iterable[dict] = (),
         detail: dict | None = None, actor: str = "") -> None:
    """Record that ``request`` was answered with the data of ``patients`` (action R).

    ``actor``: who, when the request's user is not the one (the token API's account).
    """
    if not settings.AUDIT_ENABLED:
        return
    pairs = list(dict.fromkeys((str(p), str(i or "")) for p, i in patients if p))
    page = getattr(getattr(request, "resolver_match", None), "view_name", "") or request.path
    trail.record_soon(event_id, action=events.READ, actor=actor or actor_name(request) or "anonymous",
                      actor_kind=events.USER, source_address=client_address(request), patients=pairs,
                      objects=list(objects), detail={"page": page, **(detail or {})})


def query(request, *, patients: Iterable[tuple[str, str]], criteria: dict, shown: int, actor: str = "") -> None:
    """A list answered: a Query record (PS3.15 A.5.3.10) with what was asked and who was listed."""
    asked = {k: v for k, v in criteria.items() if v not in ("", None, [], ())}
    read(request, events.QUERY, patients=patients, actor=actor,
         objects=[{"type": "query", "id": request.path, "detail": asked}], detail={"shown": shown})


class AuditedAdmin:
    """ModelAdmin mixin for models holding patient data: the change list records a Query with
    the patients on the page, the change view a read of the row, a save an update (changed field
    names, old and new values) or create, a delete a delete, the last three in the save's
    transaction (the admin wraps each in one)."""

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        cl = getattr(response, "context_data", None) and response.context_data.get("cl")
        if cl is not None:
            rows = list(cl.result_list)
            pairs = [p for obj in rows for p in auditing.patients_of(obj)]
            query(request, patients=pairs, criteria={"model": self.model._meta.label_lower, **request.GET.dict()},
                  shown=len(rows))
        return response

    def change_view(self, request, object_id, form_url="", extra_context=None):
        response = super().change_view(request, object_id, form_url, extra_context)
        obj = getattr(response, "context_data", None) and response.context_data.get("original")
        if obj is not None and request.method == "GET":
            read(request, auditing.EVENT_OF_MODEL.get(self.model._meta.label_lower, events.PATIENT_RECORD),
                 patients=auditing.patients_of(obj), objects=auditing.objects_of(obj))
        return response

    def save_model(self, request, obj, form, change):
        before = {name: form.initial.get(name) for name in form.changed_data} if change else {}
        super().save_model(request, obj, form, change)
        after = {name: form.cleaned_data.get(name) for name in form.changed_data}
        if change and not form.changed_data:
            return
        auditing.change(auditing.EVENT_OF_MODEL.get(obj._meta.label_lower, events.PATIENT_RECORD),
                        events.UPDATE if change else events.CREATE, patients=auditing.patients_of(obj),
                        objects=auditing.objects_of(obj),
                        detail={"via": "admin", "model": obj._meta.label_lower, "key": obj.pk,
                                "changed": auditing.changes(before, after) if change else sorted(after)},
                        actor=actor_name(request))

    def save_formset(self, request, form, formset, change):
        """Inline rows (a patient's identifiers, visits; an order's procedures) saved with the page:
        recorded under the parent's event, naming the parent's patients."""
        super().save_formset(request, form, formset, change)
        parent = form.instance
        touched = ([(events.CREATE, o, []) for o in formset.new_objects]
                   + [(events.UPDATE, o, names) for o, names in formset.changed_objects]
                   + [(events.DELETE, o, []) for o in formset.deleted_objects])
        for action, obj, names in touched:
            auditing.change(auditing.EVENT_OF_MODEL.get(parent._meta.label_lower, events.PATIENT_RECORD), action,
                            # an identifier added, changed or removed is named itself too
                            patients=auditing.patients_of(parent) + (
                                auditing.patients_of(obj) if obj._meta.label_lower == "ris.patientidentifier" else []),
                            objects=auditing.objects_of(parent),
                            detail={"via": "admin", "model": obj._meta.label_lower, "changed": sorted(names)},
                            actor=actor_name(request))

    def delete_model(self, request, obj):
        self._record_delete(request, obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self._record_delete(request, obj)
        super().delete_queryset(request, queryset)

    def _record_delete(self, request, obj):
        auditing.change(auditing.EVENT_OF_MODEL.get(obj._meta.label_lower, events.PATIENT_RECORD), events.DELETE,
                        patients=auditing.patients_of(obj), objects=auditing.objects_of(obj),
                        detail={"via": "admin", "model": obj._meta.label_lower, "key": obj.pk},
                        actor=actor_name(request))
