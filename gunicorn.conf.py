"""gunicorn's configuration for the web process, read from the working directory by every start
(the Procfile, ``docker/compose.yaml`` and the image all run plain ``gunicorn pacs.wsgi``).

Settings from the environment (listed in ``.env.example``): WEB_PORT, WEB_WORKERS, WEB_TIMEOUT.
"""

import os


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else default


bind = f"0.0.0.0:{_int('WEB_PORT', 8000)}"
workers = _int("WEB_WORKERS", 2)
timeout = _int("WEB_TIMEOUT", 60)
# Access log on standard output, one line a request: the path without its query string, which
# can carry a patient's name or ID (a worklist search).
accesslog = "-"
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms'
# No control socket (gunicorn >= 25 opens one in $HOME by default): nothing here uses it, and two
# instances on one host would share its path.
control_socket_disable = True
