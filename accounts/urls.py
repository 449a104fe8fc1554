"""Sign-in and sign-out, mounted at the root by ``project.urls`` (names ``login``, ``logout``:
settings.LOGIN_URL and the templates use them)."""

from django.contrib.auth import views as auth_views
from django.urls import path

from accounts.signin import SignInView
from project.access import public

urlpatterns = [
    path("accounts/login/", public(SignInView.as_view()), name="login"),
    path("accounts/logout/", public(auth_views.LogoutView.as_view()), name="logout"),
]
