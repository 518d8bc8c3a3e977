"""file_sha256: the content hash used as the cache key everywhere (viewer, feature cache, data fingerprint)."""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path

from xrayviewer.imaging.errors import FileAccessError

_CHUNK = 1 << 20
_MEMO_SIZE = 65536  # entries (~150 bytes each): a big dataset plus browsing, without growing forever

_memo: OrderedDict[tuple[str, int, int], str] = OrderedDict()
_memo_lock = threading.Lock()


def file_sha256(path: str | os.PathLike, *, memo: bool = True) -> str:
    """Hex sha256 of a file's bytes, memoised by (resolved path, size, mtime_ns): an edited file is re-hashed.

    memo=False reads the bytes every time: integrity checks (bundle and lung weights), which must also catch a change
    that kept size and mtime (`cp -p`, bit rot), and files just written. Raises FileAccessError when unreadable.
    """
    if not memo:
        return _hash_bytes(Path(path))
    try:
        resolved = Path(path).resolve()
        info = resolved.stat()
    except OSError as err:
        raise FileAccessError(f"cannot read the file to hash it: {err.strerror or err}", str(path)) from err
    key = (str(resolved), info.st_size, info.st_mtime_ns)
    with _memo_lock:
        if key in _memo:
            _memo.move_to_end(key)
            return _memo[key]
    digest = _hash_bytes(resolved)
    with _memo_lock:
        _memo[key] = digest
        while len(_memo) > _MEMO_SIZE:
            _memo.popitem(last=False)
    return digest


def _hash_bytes(path: Path) -> str:
    sha = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                sha.update(chunk)
    except OSError as err:
        raise FileAccessError(f"cannot read the file to hash it: {err.strerror or err}", str(path)) from err
    return sha.hexdigest()
