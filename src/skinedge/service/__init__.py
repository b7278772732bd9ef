"""The clinician service: ``create_app(settings)`` (FastAPI), its feedback store and web page.

Installed by the ``serve`` extra; ``skinedge serve --model ARTIFACT`` runs it.
"""

from skinedge.service.app import create_app
from skinedge.service.settings import ServeSettings, load_settings

__all__ = ["ServeSettings", "create_app", "load_settings"]
