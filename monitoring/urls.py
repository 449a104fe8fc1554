from django.urls import path

from monitoring import console_views, views

app_name = "monitoring"

urlpatterns = [
    path("metrics", views.metrics, name="metrics"),
    # The operator's console, one accession's journey, replays (monitoring.console_views).
    path("", console_views.console, name="console"),
    path("journey/", console_views.journey, name="journey"),
    path("replays/", console_views.replays, name="replays"),
    path("replays/inbound/<int:message_id>/", console_views.replay_inbound, name="replay_inbound"),
    path("replays/outbound/<int:message_id>/", console_views.replay_outbound, name="replay_outbound"),
]
