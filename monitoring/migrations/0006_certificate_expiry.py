from django.db import migrations, models


def add_certificate_rule(apps, schema_editor):
    """Out of the box, a configured certificate that is unreadable, expired or expires within
    TLS_EXPIRY_WARNING_DAYS opens an alarm on the operator's console (no e-mail or webhook until
    the site adds them to the rule)."""
    AlarmRule = apps.get_model("monitoring", "AlarmRule")
    AlarmRule.objects.get_or_create(name="TLS certificate expiry", defaults={
        "kind": "certificate_expiry", "interface_key": "", "threshold_minutes": 60, "min_count": 1, "enabled": True})


class Migration(migrations.Migration):

    dependencies = [
        ("monitoring", "0005_hl7_refusals"),
    ]

    operations = [
        migrations.AlterField(
            model_name="alarmrule",
            name="interface_key",
            field=models.CharField(blank=True, help_text="inbound_silence: SENDING_APP^SENDING_FACILITY (MSH-3^MSH-4; required); outbound_backlog: ORU destination name; error_rate: hl7:APP^FACILITY, oru:destination or dicom:CALLING_AE; unmatched_study: calling AE title; transfer_failed: VNA destination name; dicom_refused: source IP address; hl7_refused: the source address; certificate_expiry: the setting (TLS_CERTIFICATE, TLS_CA_CERTIFICATES). Empty = each interface of the kind separately.", max_length=200),
        ),
        migrations.AlterField(
            model_name="alarmrule",
            name="kind",
            field=models.CharField(choices=[("inbound_silence", "no inbound HL7 from a sender for longer than N minutes"), ("outbound_backlog", "outbound HL7 backlog: oldest undelivered message older than N minutes"), ("error_rate", "error rate (HL7 AE/AR, DICOM failure statuses) over the window above a threshold"), ("unmatched_study", "an unmatched study older than N minutes"), ("transfer_failed", "a VNA transfer failed"), ("dicom_refused", "DICOM associations refused from a source address (not a declared node) within N minutes"), ("hl7_refused", "inbound HL7 refused (undeclared sender, or a type not granted) within the last N minutes"), ("certificate_expiry", "a configured TLS certificate is unreadable, expired or expires within TLS_EXPIRY_WARNING_DAYS")], max_length=32),
        ),
        migrations.RunPython(add_certificate_rule, migrations.RunPython.noop),
    ]
