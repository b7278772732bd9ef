"""CPU profiles (threads + pinning) for ``skinedge bench --profile``."""

from __future__ import annotations

import os
from importlib import resources

import yaml

from skinedge.errors import ConfigError
from skinedge.utils.config import read_yaml_mapping


def load_profile(spec: str) -> dict:
    """``NAME`` from the packaged profiles, or ``FILE.yaml:NAME``; checks the CPUs exist here."""
    if ":" in spec:
        file, name = spec.rsplit(":", 1)
        profiles = read_yaml_mapping(file, "profile file", "NAME: {threads: 1}")
        where = file
    else:
        name = spec
        profiles = yaml.safe_load(
            resources.files("skinedge.configs").joinpath("bench-profiles.yaml").read_text())
        where = "the packaged bench-profiles.yaml"
    if name not in profiles:
        raise ConfigError(f"no profile {name!r} in {where}; known: {sorted(profiles)}")
    profile = dict(profiles[name])
    if not isinstance(profile.get("threads"), int) or profile["threads"] < 1:
        raise ConfigError(f"profile {name!r} in {where}: threads must be a positive integer")
    cpus = profile.get("cpus")
    if cpus:
        missing = sorted(set(cpus) - os.sched_getaffinity(0))
        if missing:
            raise ConfigError(f"profile {name!r} pins to CPUs {cpus} but this process may only use "
                             f"{sorted(os.sched_getaffinity(0))}: pick a smaller profile")
    return profile
