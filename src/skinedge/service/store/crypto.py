"""Encryption at rest: AES-256-GCM with keys kept outside the database.

Every encrypted value (an image, an overlay, a note, a patient reference) is
``b"SE1" + key id (8 bytes) + nonce (12 bytes) + ciphertext``, with the value's place (``blob
c_1f..``, ``cases.note c_1f..``) as associated data, so a value copied into another row or file
does not decrypt. Keys are 32 random bytes, base64, one per line in the key file, newest first:
new values use the newest; :meth:`KeyRing.rotate` re-encrypts old values with it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from skinedge.errors import ConfigError
from skinedge.utils.io import fsync_path

MAGIC = b"SE1"
_ID = 8
_NONCE = 12


class StoreKeyError(ConfigError):
    """A key file that cannot be used, or a value no known key decrypts: the server's
    configuration, not the client's request (503 from the service)."""

    http_status = 503


def new_key() -> str:
    """A fresh key, base64 (what a key file holds per line)."""
    return encode_key(secrets.token_bytes(32))


def encode_key(key: bytes) -> str:
    """A key as a key file writes it (base64)."""
    return base64.b64encode(key).decode("ascii")


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(b"skinedge-key-id" + key).digest()[:_ID]


class KeyRing:
    """The store's keys, newest first."""

    def __init__(self, keys: list[bytes], source: str):
        if not keys:
            raise StoreKeyError(f"{source}: holds no key; delete it to make a new one, or restore it "
                                "from your backup (without it the stored images cannot be read)")
        self.keys = keys
        self.source = source
        self._by_id = {key_id(k): AESGCM(k) for k in keys}
        self.newest_id = key_id(keys[0])
        self._purposes: dict[bytes, bytes] = {}

    @classmethod
    def parse(cls, text: str, source: str) -> KeyRing:
        keys = []
        lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        for number, line in enumerate(",".join(lines).split(","), 1):
            line = line.strip()
            if not line:
                continue
            try:
                key = base64.b64decode(line, validate=True)
            except ValueError:
                key = b""
            if len(key) != 32:
                raise StoreKeyError(f"{source}: key {number} is not 32 bytes of base64; a key file "
                                    "holds one key per line as `skinedge feedback rotate-key` "
                                    "writes it")
            keys.append(key)
        return cls(keys, source)

    @classmethod
    def from_file(cls, path: Path, *, create: bool = True) -> KeyRing:
        """Read ``path``; when it does not exist and ``create``, write a new key there (0600)."""
        path = Path(path)
        if not path.exists():
            if not create:
                raise StoreKeyError(f"{path}: no key file; the store's images cannot be read "
                                    "without the key it was written with")
            path.parent.mkdir(parents=True, exist_ok=True)
            write_key_file(path, [new_key()])
        mode = path.stat().st_mode & 0o077
        if mode:
            raise StoreKeyError(f"{path}: the key file can be read by other users (mode "
                                f"{oct(path.stat().st_mode & 0o777)}); run `chmod 600 {path}`")
        return cls.parse(path.read_text(), str(path))

    def encrypt(self, data: bytes, context: str) -> bytes:
        nonce = os.urandom(_NONCE)
        sealed = self._by_id[self.newest_id].encrypt(nonce, data, context.encode())
        return MAGIC + self.newest_id + nonce + sealed

    def decrypt(self, blob: bytes, context: str) -> bytes:
        if blob[:len(MAGIC)] != MAGIC:
            raise StoreKeyError(f"{context}: not a value this store encrypted")
        head = len(MAGIC)
        kid, nonce = blob[head:head + _ID], blob[head + _ID:head + _ID + _NONCE]
        aead = self._by_id.get(kid)
        if aead is None:
            raise StoreKeyError(f"{context}: encrypted with a key that is not in {self.source}; "
                                "restore the old key (rotate-key keeps it until every value is "
                                "re-encrypted)")
        try:
            return aead.decrypt(nonce, blob[head + _ID + _NONCE:], context.encode())
        except InvalidTag:
            raise StoreKeyError(f"{context}: the encrypted value is damaged or was moved from "
                                "another record") from None

    def is_current(self, blob: bytes) -> bool:
        return blob[len(MAGIC):len(MAGIC) + _ID] == self.newest_id

    def digest(self, data: bytes) -> str:
        """Keyed content hash (HMAC-SHA256): finds duplicate images without a plain hash that
        anyone holding the image could look up."""
        return hmac.new(self._derived(b"skinedge-dedup"), data, hashlib.sha256).hexdigest()

    def pseudonym(self, value: str) -> str:
        """16 hex digits standing for ``value`` (a patient reference) outside the store."""
        return hmac.new(self._derived(b"skinedge-pseudonym"), value.encode(),
                        hashlib.sha256).hexdigest()[:16]

    def _derived(self, purpose: bytes) -> bytes:
        if purpose not in self._purposes:
            self._purposes[purpose] = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                                           info=purpose).derive(self.keys[0])
        return self._purposes[purpose]


def write_key_file(path: Path, keys: list[str]) -> None:
    """Write ``keys`` (base64, newest first) to ``path`` readable by its owner only."""
    text = "# skinedge store keys, newest first; back this file up apart from the data\n"
    text += "".join(f"{k}\n" for k in keys)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)
