"""API keys: create, look up and revoke. Only an HMAC of each key is stored.

A key reads `fj_<prefix8>_<random32>`: the prefix is stored in clear so an operator can tell keys
apart in the table and in logs; the whole key is hashed with HMAC-SHA256 under the server's
`key_pepper`, so a stolen table (without the pepper) cannot be used or brute-forced offline.
The caller owns the transaction: these helpers flush, they never commit.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from jobs.models import ApiKey, new_id
from jobs.settings import Settings, get_settings
from jobs.states import utcnow

KEY_RE = re.compile(r"^fj_([0-9a-f]{8})_([0-9a-f]{32})$")
MAX_NAME_LENGTH = 200


class InvalidKeyName(ValueError):
    """A key name that is empty or too long."""


def hash_key(key: str, settings: Settings | None = None) -> str:
    """The hex HMAC-SHA256 of `key` under the configured pepper (what `ApiKey.key_hash` holds)."""
    pepper = (settings or get_settings()).key_pepper.get_secret_value().encode()
    return hmac.new(pepper, key.encode(), hashlib.sha256).hexdigest()


def generate_key() -> tuple[str, str]:
    """A new random key and its prefix: (prefix, `fj_<prefix>_<random>`), 160 random bits in all."""
    prefix = secrets.token_hex(4)
    return prefix, f"fj_{prefix}_{secrets.token_hex(16)}"


def create_key(session: Session, name: str, settings: Settings | None = None) -> tuple[ApiKey, str]:
    """Add a key named `name`; the row and the plaintext key (shown once, never stored)."""
    name = name.strip()
    if not name or len(name) > MAX_NAME_LENGTH:
        raise InvalidKeyName(f"a key name must be 1 to {MAX_NAME_LENGTH} characters, got {len(name)}")
    prefix, key = generate_key()
    row = ApiKey(id=new_id(), name=name, prefix=prefix, key_hash=hash_key(key, settings), created_at=utcnow())
    session.add(row)
    session.flush()
    return row, key


def lookup_key(session: Session, key: str | None, settings: Settings | None = None) -> ApiKey | None:
    """The live (not revoked) key row for the plaintext `key`, or None."""
    if not key or KEY_RE.match(key) is None:
        return None  # malformed: no need to ask the database
    digest = hash_key(key, settings)
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, digest):
        return None
    return row


def revoke_key(session: Session, key_id: str) -> bool:
    """Revoke the key with id `key_id`; False when there is no such live key."""
    res = session.execute(
        update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    return bool(getattr(res, "rowcount", 0))
