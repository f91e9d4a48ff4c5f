"""Celery settings for ``celery -A taskplatform``; read with ``app.config_from_object("celeryconfig")``.

Built from the environment (REDIS_URL, TASKPLATFORM_*) by :func:`taskplatform.config.celery_config`.
Add or override Celery settings below the import.
"""

from taskplatform.config import celery_config as _celery_config
from taskplatform.settings import load_settings as _load_settings

globals().update(_celery_config(_load_settings()))
