"""DICOMweb resources (PS3.18 10.4 WADO-RS, 10.6 QIDO-RS, 9 WADO-URI), under ``/dicomweb/``."""

from django.urls import path, register_converter

from pacs.dicomweb import views

app_name = "dicomweb"


class UidConverter:
    """A path segment of UID characters (checked as a UID by the view: a 400, not a 404)."""

    regex = r"[0-9.]{1,64}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


class FrameListConverter:
    regex = r"[0-9,]{1,512}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(UidConverter, "uid")
register_converter(FrameListConverter, "frames")

_STUDY = "studies/<uid:study_uid>"
_SERIES = f"{_STUDY}/series/<uid:series_uid>"
_INSTANCE = f"{_SERIES}/instances/<uid:sop_uid>"

urlpatterns = [
    path("", views.root, name="root"),
    path("wado", views.wado_uri, name="wado"),
    # QIDO-RS
    path("studies", views.search_studies, name="search_studies"),
    path("series", views.search_series, name="search_all_series"),
    path("instances", views.search_instances, name="search_all_instances"),
    path(f"{_STUDY}/series", views.search_series, name="search_series"),
    path(f"{_STUDY}/instances", views.search_instances, name="search_study_instances"),
    path(f"{_SERIES}/instances", views.search_instances, name="search_instances"),
    # WADO-RS
    path(_STUDY, views.retrieve, name="study"),
    path(_SERIES, views.retrieve, name="series"),
    path(_INSTANCE, views.retrieve, name="instance"),
    path(f"{_STUDY}/metadata", views.metadata, name="study_metadata"),
    path(f"{_SERIES}/metadata", views.metadata, name="series_metadata"),
    path(f"{_INSTANCE}/metadata", views.metadata, name="instance_metadata"),
    path(f"{_INSTANCE}/frames/<frames:frame_list>", views.frames, name="frames"),
    path(f"{_INSTANCE}/bulkdata/<str:tag>", views.bulkdata, name="bulkdata"),
    path(f"{_INSTANCE}/rendered", views.rendered, name="rendered"),
    path(f"{_INSTANCE}/frames/<frames:frame_list>/rendered", views.rendered, name="frame_rendered"),
]
