"""Persistence: SQLAlchemy models, alembic migrations and the repository.

SQLite (``sqlite+aiosqlite:///…``) is the default for one process; PostgreSQL
(``postgresql+asyncpg://…``) is for several replicas. Importing this package has no side
effects; :class:`Database` connects lazily.
"""

from callbridge.store.db import Database
from callbridge.store.models import ApiKey, Call, Connector
from callbridge.store.repository import DuplicateCallError, Repository, transaction

__all__ = [
    "ApiKey",
    "Call",
    "Connector",
    "Database",
    "DuplicateCallError",
    "Repository",
    "transaction",
]
