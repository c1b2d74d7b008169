"""The deployment's secret: every internal hop carries it, every receiver checks it in constant time.

Internal traffic (pieces between partitions and to or from the gateway, failure reports, the gateway's
reads of a partition's info and timelines) goes to internal ports with ``Authorization: Bearer <secret>``.
The secret is per deployment: a Kubernetes Secret the operator creates and mounts into its pods, or a file
with mode 0600 in the run directory of a local deployment. A request without it is answered 401 and has no
effect; the lane refuses it from its head, before reading (or allocating for) its body.

On the wire the secret is plain text, as is the tensor data: it keeps a deployment's endpoints from anyone
who can merely reach them (other pods, other clients), not from someone who can read the pod network.
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from edgepart.errors import EdgepartError

__all__ = ["MIN_SECRET_CHARS", "Secret", "SecretError", "load_secret", "new_secret", "write_secret"]

MIN_SECRET_CHARS = 32
SCHEME = "Bearer "


class SecretError(EdgepartError, ValueError):
    """The secret file cannot be read or is too weak; the message names the field."""


@dataclass(frozen=True)
class Secret:
    """The shared secret of one deployment."""

    token: str = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.token) < MIN_SECRET_CHARS or not self.token.isascii() or not self.token.isprintable() \
                or any(c.isspace() for c in self.token):
            raise SecretError(f"secret_file: the secret must be at least {MIN_SECRET_CHARS} printable ASCII "
                              "characters without spaces")

    @property
    def header(self) -> str:
        """The value of the Authorization header every internal request carries."""
        return SCHEME + self.token

    def admits(self, authorization: str | None) -> bool:
        """True when an Authorization header carries this secret (compared in constant time)."""
        if authorization is None:
            return False
        return hmac.compare_digest(authorization.strip().encode("latin-1", "replace"), self.header.encode())


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def load_secret(path: str | Path) -> Secret:
    try:
        text = Path(path).read_text().strip()
    except OSError as err:
        raise SecretError(f"secret_file: cannot read {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise SecretError(f"secret_file: {path} is not text") from None
    return Secret(text)


def write_secret(path: Path) -> Secret:
    """A fresh secret in a new file only its owner can read (mode 0600 from the start, never wider)."""
    token = new_secret()
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return Secret(token)
