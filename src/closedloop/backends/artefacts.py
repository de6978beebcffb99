"""The artefact store: immutable blobs (model binaries, bundles, reports) by content hash.

Local folder by default: ``<root>/<first two hex digits>/<sha256>``, each written whole
(temporary file, fsync, rename). Reading checks the bytes against their name, so a corrupted
or truncated artefact is never loaded.

>>> import tempfile
>>> store = LocalArtefactStore(tempfile.mkdtemp())
>>> digest = store.put(b"model")
>>> store.get(digest)
b'model'
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from closedloop.data.durable import write_durably
from closedloop.errors import ArtefactCorrupted, BackendError, VersionNotFound


class LocalArtefactStore:
    """Content-addressed blobs in a local folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise VersionNotFound(f"{digest!r} is not an artefact hash",
                                  fix="pass the sha256 an artefact was stored under")
        return self.root / digest[:2] / digest

    def put(self, data: bytes) -> str:
        """Store ``data`` (once); return its sha256."""
        digest = hashlib.sha256(data).hexdigest()
        path = self._path(digest)
        if path.exists():
            return digest
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_durably(path, data)
        except OSError as exc:
            raise BackendError(f"could not store an artefact under {self.root}: {exc}",
                               fix=f"check {self.root}") from exc
        return digest

    def get(self, digest: str) -> bytes:
        """The artefact stored under ``digest``, checked against it."""
        path = self._path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise VersionNotFound(f"artefact {digest[:12]} is not in {self.root}",
                                  fix="restore the artefact store, or retrain") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise ArtefactCorrupted(
                f"artefact {digest[:12]} at {path} does not match its hash: it is corrupted",
                fix="restore it from a backup, or retrain and register a new version")
        return data
