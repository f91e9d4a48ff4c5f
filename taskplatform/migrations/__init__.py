"""Alembic migrations of the audit schema (``python manage.py db upgrade``)."""
