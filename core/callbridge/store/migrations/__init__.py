"""Alembic migrations (loaded by alembic from this folder, never imported)."""
