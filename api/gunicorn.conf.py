"""Gunicorn config for the tickguard REST service: `gunicorn -c api/gunicorn.conf.py`.

The settings live in the package (tickguard.service.gunicorn_conf) so that `tickguard serve`
and the container image use exactly the same ones without needing this repository checkout.
"""

from tickguard.service.gunicorn_conf import *  # noqa: F403
from tickguard.service.gunicorn_conf import child_exit, on_exit, on_starting  # noqa: F401  (hooks)
