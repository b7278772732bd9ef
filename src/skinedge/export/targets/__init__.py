"""Built-in export targets, one module each: importing this package imports every module in
it, which registers its target (the targets' backends load only when an export runs)."""

import pkgutil
from importlib import import_module

for _module in pkgutil.iter_modules(__path__):
    import_module(f"{__name__}.{_module.name}")
