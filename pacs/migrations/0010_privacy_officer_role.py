"""The privacy-officer role as a Django group (see project.access): opens the audit page only."""

from django.db import migrations

ROLE = "privacy_officer"


def create_role(apps, schema_editor):
    apps.get_model("auth", "Group").objects.get_or_create(name=ROLE)


def remove_role(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name=ROLE).delete()


class Migration(migrations.Migration):
    dependencies = [("pacs", "0009_dicom_tls_nodes")]
    operations = [migrations.RunPython(create_role, remove_role)]
