"""VNA credentials stored sealed (project.encryption): the columns become text (a sealed value is
longer than the clear one) and the values already stored in clear are sealed."""

from django.db import migrations

import project.encryption


def seal_stored(apps, schema_editor):
    VnaDestination = apps.get_model("pacs", "VnaDestination")
    for row in VnaDestination.objects.exclude(username="", password=""):
        # The field seals on save; values read from before this migration are in clear.
        row.save(update_fields=["username", "password"])


class Migration(migrations.Migration):

    dependencies = [
        ("pacs", "0005_declared_dicom_peers"),
    ]

    operations = [
        migrations.AlterField(
            model_name="vnadestination",
            name="password",
            field=project.encryption.SealedField(blank=True),
        ),
        migrations.AlterField(
            model_name="vnadestination",
            name="username",
            field=project.encryption.SealedField(blank=True),
        ),
        migrations.RunPython(seal_stored, migrations.RunPython.noop),
    ]
