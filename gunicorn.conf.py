"""gunicorn settings for the example app: `make run` (or `gunicorn -c gunicorn.conf.py`).

Anything here can be overridden on the command line or in ``GUNICORN_CMD_ARGS``
(``GUNICORN_CMD_ARGS="--workers 8 --bind 0.0.0.0:9000"``), and the app reads every
``TIERED_CACHE_*`` environment variable. With no ``TIERED_CACHE_REDIS_URL`` and no Redis
on 127.0.0.1:6379, an embedded Redis runs for as long as the server does.
"""

import os
import secrets

from tiered_cache.gunicorn import install

wsgi_app = "example_app:create_app()"
bind = [f"127.0.0.1:{os.environ.get('PORT', '8000')}"]
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
# The app is built once, in the master, and forked into every worker. Safe: each worker
# gets a fresh L1 and makes its own Redis connections and listener after the fork.
preload_app = True
accesslog = os.environ.get("ACCESS_LOG", "-")

# One session-signing key for every worker of this server (set SECRET_KEY to keep
# sessions valid across restarts).
os.environ.setdefault("SECRET_KEY", secrets.token_hex(32))

# Last, so that hooks defined above would be chained, not replaced.
install(globals())
