"""Web pages of this app (each view declares its roles, see pacs.access)."""

from django.urls import path  # noqa: F401

urlpatterns: list = []
