"""The model registry: versions (a checkpoint, its exported artifacts, reports and training
manifest, each file hashed), a ``current`` pointer per deployment, atomic and audited
promotion and rollback.

A folder on disk; every change is a rename of a finished file or folder, so object storage
that renames atomically (or a sync of the folder) can hold it too::

    REGISTRY/
      versions/v0001/            immutable once registered (staged in versions/.staging-*)
        version.json             id, created, parent, source, metrics, gates, notes, by, card
                                 summary, and files: {relative path: sha256}; written last
        checkpoint/              copy of the checkpoint folder (model.safetensors, card.json)
        artifacts/<name>         exported artifacts with the files export wrote beside them
                                 (export report, OpenVINO .bin, TensorRT card and script)
        reports/<name>           evaluation / bench / gate / retrain reports
        data/manifest.json       the split manifest the model was trained from
      deployments/<name>.json    a deployment's pointer: version, artifact, promoted_at, by,
                                 reason, forced, history (older pointers, newest first);
                                 replaced atomically (temporary + fsync + rename + fsync dir)
      audit.jsonl                one JSON line per register / promote / rollback (a
                                 "started" and a "done" line) and per refusal; fsync'd
      .lock                      writers hold an fcntl lock on it

>>> reg = Registry("registry")
>>> v = reg.register(Path("runs/x/train/best"), [Path("exports/m_fp32.onnx")])
>>> reg.promote(v.id, "server")

No torch here (the service and a runtime-only install use it): a checkpoint's card is read as
JSON, artifacts are copied by what their export report lists, never loaded.
"""

from skinedge.registry.store import Registry
from skinedge.registry.version import RegistryError, Version

__all__ = ["Registry", "RegistryError", "Version"]
