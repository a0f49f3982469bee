"""Authentication: bearer tokens from a token file, or a verified client certificate.

A client names itself with ``authorization: Bearer <token>`` call metadata; a token file
(TOML, ``[tokens]`` table of ``"token" = "User:alice"``) maps tokens to principals.
Without a token, a verified client certificate gives ``User:<subject CN>``. Tokens are
never logged, and only their SHA-256 digests are kept in memory.
"""

from __future__ import annotations

import hashlib
import logging
import tomllib
from pathlib import Path

from logstore import acls
from logstore.acls import (
    InvalidAclError,
)
from logstore.server.security.settings import SecurityConfigError

log = logging.getLogger(__name__)


#: request metadata key carrying "Bearer <token>"
AUTHORIZATION_KEY = "authorization"
#: gRPC auth-context key of the verified client certificate's subject common name
CN_KEY = "x509_common_name"


def load_tokens(path: Path) -> dict[bytes, str]:
    """SHA-256 digest of each token -> its principal, from a TOML ``[tokens]`` table."""
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SecurityConfigError(f"cannot read auth tokens file {path}: {exc}") from exc
    table = document.get("tokens")
    if not isinstance(table, dict) or not table:
        raise SecurityConfigError(
            f'auth tokens file {path} has no [tokens] table (token = "User:x")'
        )
    digests: dict[bytes, str] = {}
    for number, (token, principal) in enumerate(table.items(), start=1):
        # Name the entry by position: the token itself must not reach a log.
        if not isinstance(principal, str) or not token:
            raise SecurityConfigError(
                f'auth tokens file {path}: entry {number} is not token = "User:x"'
            )
        try:
            digests[token_digest(token)] = acls.validate_principal(principal)
        except InvalidAclError as exc:
            raise SecurityConfigError(f"auth tokens file {path}: entry {number}: {exc}") from exc
    return digests


def token_digest(token: str) -> bytes:
    """SHA-256 of a token (32 bytes): the broker keeps and looks up tokens only by this
    digest, never by the token itself."""
    return hashlib.sha256(token.encode()).digest()
