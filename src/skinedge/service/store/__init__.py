"""The feedback store: SQL tables (SQLAlchemy 2, Alembic), encrypted image files, audit log."""

from skinedge.service.store.crypto import KeyRing, StoreKeyError
from skinedge.service.store.db import Actor, CaseView, Prediction, Store, migrate

__all__ = ["Actor", "CaseView", "KeyRing", "Prediction", "Store", "StoreKeyError", "migrate"]
