"""A module-level app for command-line tools that need one (``celery -A tasks.celery_app flower``)."""

from tasks.app import create_celery

app = create_celery()
