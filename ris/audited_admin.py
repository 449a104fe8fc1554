"""The admin's audit trail: a ModelAdmin mixin for the models holding patient data (DICOM PS3.15
A.5.3, IHE ATNA).  The change list records a Query, the change view a read of the row, a save,
an inline save and a delete the change, naming the patients and objects by the domain's rules
(``ris.auditing``)."""

from __future__ import annotations

from project.auditing import events
from project.auditing.web import actor_name, query, read
from ris import auditing


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
