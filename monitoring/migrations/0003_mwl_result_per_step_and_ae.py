"""One WorklistQueryResult per (scheduled step, calling AE) with first and last time, instead of
one row per returned item (a modality polling the MWL every minute would add a row per item
per poll).  Existing rows are folded: the earliest kept, its last time = the latest seen."""

import django.utils.timezone
from django.db import migrations, models
from django.db.models import Max, Min


def fold(apps, schema_editor):
    Result = apps.get_model("monitoring", "WorklistQueryResult")
    pairs = (Result.objects.values("scheduled_step_id", "calling_ae_title")
             .annotate(keep=Min("pk"), last=Max("first_returned_at")))
    for pair in pairs:
        Result.objects.filter(pk=pair["keep"]).update(last_returned_at=pair["last"])
        (Result.objects.filter(scheduled_step_id=pair["scheduled_step_id"],
                               calling_ae_title=pair["calling_ae_title"]).exclude(pk=pair["keep"]).delete())


class Migration(migrations.Migration):

    dependencies = [
        ("monitoring", "0002_replay_records_and_mwl_results"),
    ]

    operations = [
        migrations.RemoveIndex(model_name="worklistqueryresult", name="monitoring__schedul_9a1e89_idx"),
        migrations.RenameField(model_name="worklistqueryresult", old_name="returned_at",
                               new_name="first_returned_at"),
        migrations.AddField(model_name="worklistqueryresult", name="last_returned_at",
                            field=models.DateTimeField(default=django.utils.timezone.now), preserve_default=False),
        migrations.RunPython(fold, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="worklistqueryresult",
            constraint=models.UniqueConstraint(fields=("scheduled_step", "calling_ae_title"),
                                               name="uniq_mwl_result_step_ae"),
        ),
    ]
