"""The example project's tests run with its Django settings, as `manage.py test` or pytest-django would."""

import os
import sys
from pathlib import Path

import django

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
_had_settings = "DJANGO_SETTINGS_MODULE" in os.environ
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
django.setup()
import shop.celery  # noqa: E402, F401 - the Celery app, configured from the settings just loaded

if not _had_settings:
    # The settings are loaded now; workers that other tests in the same run
    # start as subprocesses must not inherit a settings module they cannot import.
    del os.environ["DJANGO_SETTINGS_MODULE"]
