"""Where uploaded documents' bytes live: a small content-addressed blob store.

A blob is named by the SHA-256 of its bytes, so the same content is stored once however often it
is uploaded (a re-upload of a contract text is a new *document version* pointing at the same blob)
and a blob can always be checked against its name.  Document rows (models/document.py) keep the
hash; the bytes never go into the database.

``BlobStore`` is the interface the API codes against; ``LocalBlobStore`` keeps blobs on a local
directory (``DOCUMENT_DIR``), which is the default.  An S3-compatible backend can implement the
same four operations later (``writer`` streaming to a multipart upload, ``open`` a ranged GET).

Local layout: ``<root>/ab/cd/<sha256>`` (two levels of fan-out keep directories small), written
as ``<root>/tmp/<random>`` first -- hashed and counted while it streams, fsynced -- then renamed
into place atomically, so a reader never sees half a blob and a crash leaves only a temp file
(swept at start-up).  Writing a blob that already exists replaces it with identical bytes, which
also repairs a copy that was damaged on disk.  Blobs are made read-only (0444).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

CHUNK = 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BlobMissing(Exception):
    """No blob with that hash is stored."""


class BlobTooLarge(Exception):
    """More bytes were written than the writer allows."""


@dataclass(frozen=True)
class StoredBlob:
    sha256: str
    size: int
    existed: bool  # the same content was stored already (deduplicated)


class BlobWriter(Protocol):
    size: int

    def write(self, data: bytes) -> None: ...

    def commit(self, inspect: Callable[[BinaryIO], None] | None = None) -> StoredBlob:
        """Make the blob addressable.  ``inspect`` (optional) reads the complete content from a
        seekable file first and may raise to refuse it; then nothing is stored."""
        ...

    def abort(self) -> None: ...


class BlobStore(Protocol):
    def writer(self, max_bytes: int | None = None) -> BlobWriter: ...

    def put(self, chunks: Iterable[bytes], max_bytes: int | None = None) -> StoredBlob: ...

    def open(self, sha256: str) -> BinaryIO: ...

    def exists(self, sha256: str) -> bool: ...


def check_key(sha256: str) -> str:
    if not _SHA256.match(sha256 or ""):
        raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
    return sha256


class LocalBlobStore:
    """Blobs on a local directory, named by their SHA-256."""

    TEMP_MAX_AGE_SECONDS = 24 * 3600

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).resolve()
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._sweep_temp()

    # ------------------------------------------------------------------ paths
    def path_of(self, sha256: str) -> Path:
        check_key(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    # ------------------------------------------------------------------ write
    def writer(self, max_bytes: int | None = None) -> LocalBlobWriter:
        return LocalBlobWriter(self, max_bytes)

    def put(self, chunks: Iterable[bytes], max_bytes: int | None = None) -> StoredBlob:
        w = self.writer(max_bytes)
        try:
            for chunk in chunks:
                w.write(chunk)
            return w.commit()
        except BaseException:
            w.abort()
            raise

    # ------------------------------------------------------------------ read
    def open(self, sha256: str) -> BinaryIO:
        try:
            return open(self.path_of(sha256), "rb")
        except FileNotFoundError:
            raise BlobMissing(sha256) from None

    def exists(self, sha256: str) -> bool:
        return self.path_of(sha256).is_file()

    def size(self, sha256: str) -> int:
        try:
            return self.path_of(sha256).stat().st_size
        except FileNotFoundError:
            raise BlobMissing(sha256) from None

    def chunks(self, sha256: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        with self.open(sha256) as f:
            while block := f.read(chunk_size):
                yield block

    def verify(self, sha256: str) -> tuple[str, int]:
        """Read the blob once: (the SHA-256 of what is on disk, its size)."""
        h, size = hashlib.sha256(), 0
        for block in self.chunks(sha256):
            h.update(block)
            size += len(block)
        return h.hexdigest(), size

    # ------------------------------------------------------------------ housekeeping
    def _sweep_temp(self) -> None:
        cutoff = time.time() - self.TEMP_MAX_AGE_SECONDS
        for p in self.tmp.iterdir():
            try:
                if p.stat().st_mtime < cutoff:
                    p.unlink()
            except OSError:
                pass


class LocalBlobWriter:
    """Streams into a temp file, hashing and counting; ``commit`` renames it to its hash."""

    def __init__(self, store: LocalBlobStore, max_bytes: int | None) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.size = 0
        self._hash = hashlib.sha256()
        self._path = store.tmp / f"{uuid.uuid4().hex}.part"
        self._file: BinaryIO | None = open(self._path, "x+b")  # noqa: SIM115 - written chunk by chunk, closed by finish/abort

    def write(self, data: bytes) -> None:
        if self._file is None:
            raise ValueError("writer is closed")
        if self.max_bytes is not None and self.size + len(data) > self.max_bytes:
            raise BlobTooLarge(f"more than {self.max_bytes} bytes")
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    def commit(self, inspect: Callable[[BinaryIO], None] | None = None) -> StoredBlob:
        f = self._file
        if f is None:
            raise ValueError("writer is closed")
        try:
            f.flush()
            os.fsync(f.fileno())
            if inspect is not None:
                f.seek(0)
                inspect(f)
        except BaseException:
            self.abort()
            raise
        f.close()
        self._file = None
        sha = self._hash.hexdigest()
        final = self.store.path_of(sha)
        final.parent.mkdir(parents=True, exist_ok=True)
        existed = final.exists()
        os.chmod(self._path, 0o444)
        os.replace(self._path, final)  # atomic; same name = same bytes (and a damaged copy is repaired)
        _fsync_dir(final.parent)
        return StoredBlob(sha, self.size, existed)

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def blob_store(settings) -> LocalBlobStore:
    """The configured store (only the local directory for now)."""
    return LocalBlobStore(settings.document_dir)
