"""The service's settings: a YAML file, then ``SKINEDGE_*`` environment variables, then the
options given to ``skinedge serve`` (each overrides the one before).

>>> settings = load_settings("serve.yaml", model="exports/lite0_int8.xml")
>>> create_app(settings)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from skinedge.errors import ConfigError
from skinedge.utils.config import describe_errors, read_yaml_mapping

#: Class codes whose lesions are malignant (or, for actinic keratosis, premalignant) in the
#: HAM10000 / ISIC 2019 / binary vocabularies: a case predicted as one is flagged.
MALIGNANT_CODES = frozenset({"mel", "bcc", "akiec", "ak", "scc"})


class ServeSettings(BaseSettings):
    """Everything ``create_app`` needs; YAML keys are the field names, environment variables are
    ``SKINEDGE_`` plus the name in capitals (``SKINEDGE_DATABASE_URL``)."""

    model_config = SettingsConfigDict(env_prefix="SKINEDGE_", extra="forbid")

    model: Path | None = Field(None, description="Exported artifact (or checkpoint folder) to "
                               "serve; required by `skinedge serve`, not by the store commands.")
    explain: Path | None = Field(None, description="Checkpoint the artifact was exported from, "
                                 "for Grad-CAM overlays; none: overlays answer 409.")
    registry: Path | None = Field(None, description="Model registry to serve from instead of "
                                  "`model`: the current version of `deployment`, its "
                                  "checkpoint for Grad-CAM; a promotion is served without a "
                                  "restart.")
    deployment: str = Field("server", pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
                            description="The registry deployment whose pointer is served.")
    registry_poll_seconds: float = Field(2.0, gt=0, le=3600, description="How often the "
                                         "deployment's pointer is checked for a promotion.")
    data_dir: Path = Field(Path("skinedge-service"), description="Holds the encrypted image "
                           "store, the SQLite database and the key file.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default "
                                     "sqlite:///DATA_DIR/skinedge.db.")
    key_file: Path | None = Field(None, description="Store keys, newest first; default "
                                  "DATA_DIR/store.key, made (mode 0600) on first use.")
    store_key: SecretStr | None = Field(None, description="Store keys (base64, comma-separated, "
                                        "newest first) instead of a key file.")
    max_upload_mb: float = Field(20.0, gt=0, le=200)
    max_pixels: int = Field(64_000_000, ge=1_000_000)
    rate_limit_per_minute: int = Field(120, ge=1, description="Requests per token per minute.")
    top_k: int = Field(3, ge=1, le=20)
    malignant_threshold: float = Field(
        0.3, ge=0, le=1, description="Flag a case when the malignant classes' probabilities "
        "add up to this, even if the top class is benign.")
    retention_days: int | None = Field(None, ge=1, description="`skinedge feedback purge` "
                                       "erases cases older than this; none keeps them.")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed to call "
                                    "the API from another site; empty: none (same origin only).")
    forwarded_allow_ips: str | None = Field(
        None, description="Addresses of the reverse proxies whose X-Forwarded-For is believed "
        "(uvicorn's --forwarded-allow-ips, e.g. 127.0.0.1); none: proxy headers are ignored "
        "and the connection's address is recorded.")
    max_concurrent_uploads: int | None = Field(
        None, ge=1, description="Uploads decoded and classified at once per worker (each holds "
        "a decoded image in memory); others wait. Default: the CPU count.")
    threads: int | None = Field(None, ge=1, description="Inference threads per worker; default "
                                "half the CPU cores, leaving the rest to decode, encode, "
                                "encrypt and store the images of other requests.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1)

    @field_validator("registry")
    @classmethod
    def _model_or_registry(cls, registry: Path | None, info: ValidationInfo) -> Path | None:
        if registry is not None and info.data.get("model") is not None:
            raise ValueError("give a model (--model ARTIFACT) or a registry (--registry REG "
                             "--deployment NAME), not both")
        if registry is not None and info.data.get("explain") is not None:
            raise ValueError("with a registry, the Grad-CAM checkpoint is the served "
                             "version's own: leave out --explain")
        return registry

    @field_validator("cors_origins")
    @classmethod
    def _no_wildcard(cls, origins: list[str]) -> list[str]:
        if "*" in origins:
            raise ValueError("'*' would let any site call the API with a clinician's token; "
                             "list the origins (https://clinic.example.org)")
        return origins

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings  # the YAML file is merged into init by load_settings

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'skinedge.db'}"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def load_settings(config: Path | str | None = None, **options: Any) -> ServeSettings:
    """Settings from ``config`` (YAML), the environment and ``options`` (None values ignored).

    Raises:
        ConfigError: an unreadable file, an unknown key or a bad value; names the file and key.
    """
    doc = read_yaml_mapping(config, "service config", "model: exports/model.onnx") \
        if config is not None else {}
    doc.update({key: value for key, value in options.items() if value is not None})
    # Environment variables win over the file but not over options given on the command line.
    env = {name.removeprefix("SKINEDGE_").lower() for name in os.environ
           if name.startswith("SKINEDGE_")}
    doc = {key: value for key, value in doc.items()
           if key not in env or key in options and options[key] is not None}
    # What to serve, given on the command line, replaces the file's and the environment's
    # choice: --model drops a configured registry, --registry a configured model.
    if options.get("model") is not None and options.get("registry") is None:
        doc["registry"] = None
    if options.get("registry") is not None:
        doc.update({key: None for key in ("model", "explain") if options.get(key) is None})
    where = f"service config {config}" if config else "service settings"
    try:
        return ServeSettings(**doc)
    except ValidationError as exc:
        raise ConfigError(f"invalid {where} (or SKINEDGE_* variables):\n"
                          f"{describe_errors(exc, ServeSettings)}") from exc
