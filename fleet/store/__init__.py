"""The fleet store: one contract (`Store`) over SQLite (the embedded default) and PostgreSQL, chosen by a URL;
schema migrations (`fleet.store.migrate`, Alembic); leader election through the database (`fleet.store.leader`)."""

from fleet.store.schema import RECORD_COLUMNS, RECORD_TABLES
from fleet.store.store import Store, StoreUnavailable, row_values

__all__ = ["RECORD_COLUMNS", "RECORD_TABLES", "Store", "StoreUnavailable", "row_values"]
