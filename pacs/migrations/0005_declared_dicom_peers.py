"""Declared DICOM peers: storage commitment gets its own grant (it was part of allow_store: existing
nodes keep what they had), nodes may come from DICOM_NODES, a node's host is required (a row without
one matches no address and is refused until a host is entered), and refused associations are counted."""

from django.db import migrations, models

import pacs.models.nodes


def commitment_as_store(apps, schema_editor):
    DicomNode = apps.get_model("pacs", "DicomNode")
    DicomNode.objects.filter(allow_store=True).update(allow_storage_commitment=True)


class Migration(migrations.Migration):

    dependencies = [
        ('pacs', '0004_images_and_transfers'),
    ]

    operations = [
        migrations.AddField(
            model_name='dicomnode',
            name='allow_storage_commitment',
            field=models.BooleanField(default=False, help_text='may send Storage Commitment reports (N-EVENT-REPORT): a VNA'),
        ),
        migrations.RunPython(commitment_as_store, migrations.RunPython.noop),
        migrations.AddField(
            model_name='dicomnode',
            name='from_environment',
            field=models.BooleanField(default=False, help_text='declared in DICOM_NODES (edits are overwritten)'),
        ),
        migrations.AlterField(
            model_name='dicomnode',
            name='host',
            field=models.CharField(help_text='where it calls from: IP address, CIDR network (10.1.4.0/24) or host name', max_length=255, validators=[pacs.models.nodes.validate_host]),
        ),
        migrations.CreateModel(
            name='DicomRefusal',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('hour', models.DateTimeField(help_text='start of the hour (UTC)')),
                ('address', models.CharField(help_text='source IP address of the connection', max_length=45)),
                ('reason', models.CharField(max_length=32)),
                ('calling_ae_title', models.CharField(blank=True, help_text='the last one refused', max_length=16)),
                ('count', models.PositiveIntegerField(default=0)),
                ('last_at', models.DateTimeField()),
            ],
            options={
                'ordering': ['-hour'],
                'indexes': [models.Index(fields=['last_at'], name='pacs_dicomr_last_at_d1e480_idx')],
                'constraints': [models.UniqueConstraint(fields=('hour', 'address', 'reason'), name='uniq_dicom_refusal_hour')],
            },
        ),
    ]
