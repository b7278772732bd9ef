"""The environment every process that starts Flower gets, in one place.

No dependency installs by the SuperLink (it pulled gigabytes of CUDA torch), no telemetry from
Flower or Ray. Flower reads these when it is imported, so the apps call
:func:`flower_environment` before their first ``flwr`` import; ``deploy`` passes
:data:`FLOWER_ENV` to the processes it starts. Imports nothing heavy.
"""

from __future__ import annotations

import os

#: Variables set for Flower (and Ray) unless the environment already sets them.
FLOWER_ENV = {"FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
              "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def flower_environment() -> None:
    """Set :data:`FLOWER_ENV` in this process where not set already (before flwr is imported)."""
    for key, value in FLOWER_ENV.items():
        os.environ.setdefault(key, value)
