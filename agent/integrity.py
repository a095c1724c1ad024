"""Checksums of downloaded files: recorded beside the file when it is fetched, verified whenever it is read.

DPPO's data and checkpoints are published on Google Drive without checksums, so nothing can be checked on the
first download; `record_checksum` writes the sha256 of what was fetched to `<file>.sha256` (the `sha256sum`
format), and `verify_checksum` compares a file with that record before it is used (a later download, a
checkpoint load, a dataset load), so a file altered after the download is refused. Files without a record (made
by the toolkit itself) are not checked.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from agent.errors import DataError

_CHUNK = 1 << 20


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_path(path: str | os.PathLike) -> Path:
    """`<path>.sha256`, where a file's recorded checksum lives."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def record_checksum(path: str | os.PathLike) -> str:
    """Write `<path>.sha256` (`<hex>  <name>`) for a file just downloaded; returns the hex digest."""
    digest = sha256_of(path)
    checksum_path(path).write_text(f"{digest}  {Path(path).name}\n")
    return digest


def verify_checksum(path: str | os.PathLike) -> bool:
    """Compare a file with its recorded sha256, when it has one.

    Returns:
        True when a record exists and matches, False when there is no record.

    Raises:
        DataError: the file's sha256 differs from the record (or the record is unreadable).
    """
    record = checksum_path(path)
    if not record.is_file():
        return False
    expected = record.read_text().split()[:1]
    if not expected or len(expected[0]) != 64:
        raise DataError(f"{record} is not a sha256 record; delete it and download {Path(path).name} again")
    actual = sha256_of(path)
    if actual != expected[0].lower():
        raise DataError(
            f"{path} does not match the sha256 recorded when it was downloaded ({record}); the file changed since: "
            "download it again (script/dataset/download.py --force)"
        )
    return True
