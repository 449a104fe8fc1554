"""The dicom_refused alarm kind, and a rule of that kind out of the box: an association refused
because its calling AE is no declared node (or calls from another address) opens an alarm on the
operator's console per source address.  E-mail addresses or a webhook can be added to it in the admin."""

from django.db import migrations, models

DEFAULT_RULE = "DICOM association refused"


def add_rule(apps, schema_editor):
    AlarmRule = apps.get_model("monitoring", "AlarmRule")
    AlarmRule.objects.get_or_create(name=DEFAULT_RULE, defaults={"kind": "dicom_refused", "threshold_minutes": 60,
                                                                "min_count": 1, "enabled": True})


def remove_rule(apps, schema_editor):
    apps.get_model("monitoring", "AlarmRule").objects.filter(name=DEFAULT_RULE, kind="dicom_refused").delete()


class Migration(migrations.Migration):

    dependencies = [
        ('monitoring', '0003_mwl_result_per_step_and_ae'),
        ('pacs', '0005_declared_dicom_peers'),
    ]

    operations = [
        migrations.AlterField(
            model_name='alarmrule',
            name='interface_key',
            field=models.CharField(blank=True, help_text='inbound_silence: SENDING_APP^SENDING_FACILITY (MSH-3^MSH-4; required); outbound_backlog: ORU destination name; error_rate: hl7:APP^FACILITY, oru:destination or dicom:CALLING_AE; unmatched_study: calling AE title; transfer_failed: VNA destination name; dicom_refused: source IP address. Empty = each interface of the kind separately.', max_length=200),
        ),
        migrations.AlterField(
            model_name='alarmrule',
            name='kind',
            field=models.CharField(choices=[('inbound_silence', 'no inbound HL7 from a sender for longer than N minutes'), ('outbound_backlog', 'outbound HL7 backlog: oldest undelivered message older than N minutes'), ('error_rate', 'error rate (HL7 AE/AR, DICOM failure statuses) over the window above a threshold'), ('unmatched_study', 'an unmatched study older than N minutes'), ('transfer_failed', 'a VNA transfer failed'), ('dicom_refused', 'DICOM associations refused from a source address (not a declared node) within N minutes')], max_length=32),
        ),
        migrations.RunPython(add_rule, remove_rule),
    ]
