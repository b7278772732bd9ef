"""Built-in export targets, one module each: importing this package imports every module in
it, which registers its target (the targets' backends load only when an export runs)."""

from skinedge.utils.lazy import import_submodules

import_submodules(__name__)
