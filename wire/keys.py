"""Key files: 32 random bytes as 64 hex digits on one line, readable by the owner only.

`stemlink keygen PATH` writes one; serve/send/live read it with `--key-file PATH`.
`check_key_file` is what `stemlink doctor` asks."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from stemlink.wire.auth import KEY_SIZE, AuthError

_MODE_MASK = 0o077  # any permission for group or others


def generate_key_file(path: str | Path, *, force: bool = False) -> Path:
    """Write a fresh random key to `path` with mode 0600 (created with that mode, never
    readable by others even for an instant). Refuses to overwrite unless `force`."""
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise AuthError(f"{path} exists; remove it or pass --force to replace it") from None
    except OSError as e:
        raise AuthError(f"cannot write {path}: {e.strerror or e}") from None
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)  # an existing file (force) keeps its mode otherwise
        f.write(secrets.token_hex(KEY_SIZE) + "\n")
    return path


def check_key_file(path: str | Path) -> str | None:
    """What is wrong with a key file, in one line, or None if it is usable."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"key file {path} does not exist (create one with `stemlink keygen {path}`)"
    except OSError as e:
        return f"cannot read key file {path}: {e.strerror or e}"
    if not stat.S_ISREG(st.st_mode):
        return f"key file {path} is not a regular file"
    if st.st_mode & _MODE_MASK:
        return (f"key file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o});"
                f" run `chmod 600 {path}`")
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as e:
        return f"cannot read key file {path}: {getattr(e, 'strerror', None) or e}"
    if len(text) != 2 * KEY_SIZE or any(c not in "0123456789abcdefABCDEF" for c in text):
        return (f"key file {path} does not hold a key ({2 * KEY_SIZE} hex digits); "
                f"make one with `stemlink keygen`")
    return None


def load_key_file(path: str | Path) -> bytes:
    """The 32-byte key; AuthError (one line) if the file is missing, malformed or readable
    by others."""
    problem = check_key_file(path)
    if problem:
        raise AuthError(problem)
    return bytes.fromhex(Path(path).read_text(encoding="ascii").strip())
