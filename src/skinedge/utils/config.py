"""Configs for any stage: YAML file -> ``--set a.b=c`` overrides -> validated pydantic object.

Training, GAN, selection, ablation and QAT configs all load through these functions; every run
writes its resolved config next to its outputs with :func:`dump_config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from skinedge.errors import ConfigError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def apply_overrides(doc: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides to a nested dict; values are parsed as YAML scalars/lists.

    Raises:
        ConfigError: an override is not of the form ``key=value``, or its value is not YAML.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        node = doc
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({exc})") from exc
    return doc


def validate_config(config_class: type[ConfigT], doc: Any, what: str) -> ConfigT:
    """``config_class.model_validate(doc)``, failing with a message that names ``what`` (e.g.
    ``training config in run.yaml``) and every bad field.

    Raises:
        ConfigError: ``doc`` is not a mapping, or has unknown keys or invalid values.
    """
    if not isinstance(doc, dict):
        raise ConfigError(f"invalid {what}: expected a mapping of keys to values "
                          f"(section: ...), got a {type(doc).__name__}")
    try:
        return config_class.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(f"invalid {what}:\n{describe_errors(exc, config_class)}") from exc


def describe_errors(exc: ValidationError, config_class: type[BaseModel]) -> str:
    """One line per bad field: its dotted key, what is wrong, the value given, and for an
    unknown key the keys its section does take (pydantic's own text names the class and a URL,
    neither of which helps a user)."""
    lines = []
    for error in exc.errors():
        path = [str(part) for part in error["loc"]]
        key = ".".join(path)
        if error["type"] == "extra_forbidden":
            known = _section_keys(config_class, path[:-1])
            where = ".".join(path[:-1]) or "the top level"
            lines.append(f"  {key}: unknown key" + (f"; {where} takes {', '.join(known)}"
                                                    if known else ""))
            continue
        message = error["msg"].removeprefix("Value error, ")
        value = error.get("input")
        shown = "" if error["type"] == "value_error" or isinstance(value, dict | list) \
            else f" (got {value!r})"
        lines.append(f"  {key}: {message}{shown}")
    return "\n".join(lines)


def _section_keys(config_class: type[BaseModel], path: list[str]) -> list[str]:
    """The keys of the (nested) config section at ``path``; [] when it is not a model."""
    section: Any = config_class
    for part in path:
        field = section.model_fields.get(part) if isinstance(section, type) and \
            issubclass(section, BaseModel) else None
        if field is None:
            return []
        section = field.annotation
    if isinstance(section, type) and issubclass(section, BaseModel):
        return list(section.model_fields)
    return []


def read_yaml_mapping(path: Path | str, what: str, example: str) -> dict[str, Any]:
    """A YAML file a user named whose top level is a mapping (an empty file is ``{}``).

    Args:
        path: The file.
        what: What it is, for messages (``config``, ``profile file``).
        example: A line of what it should hold, for messages (``section: ...``).

    Raises:
        ConfigError: missing, unreadable, not UTF-8, bad YAML, or not a mapping; names the file.
    """
    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a {what} is a mapping of keys to values ({example}), "
                          f"not a {type(doc).__name__}")
    return doc


def load_config(path: Path | str | None, overrides: list[str] | None,
                config_class: type[ConfigT], *, kind: str = "config") -> ConfigT:
    """Read a YAML config (optional), apply ``--set`` overrides, validate as ``config_class``.

    Raises:
        ConfigError: unreadable YAML, a bad override, or invalid values; the message names the
            file and the field.
    """
    doc = read_yaml_mapping(path, "config", "section: ...") if path is not None else {}
    doc = apply_overrides(doc, overrides or [])
    return validate_config(config_class, doc, f"{kind} in {path}" if path else kind)


def dump_config(cfg: BaseModel) -> str:
    """``cfg`` as YAML in field order, as a run writes it to ``config.yaml``."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
