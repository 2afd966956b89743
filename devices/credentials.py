"""Device credentials: random secrets shown once, stored only as a salted hash.

Device secrets are 256-bit random tokens, not passwords people choose, so a salted SHA-256 is
as strong against guessing as a slow password hash while keeping verification cheap enough for
the HTTP ingest path, which checks a credential on every request.
"""

import hashlib
import hmac
import secrets

ALGORITHM = "sha256"


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def hash_secret(secret: str, salt: str | None = None) -> str:
    salt = salt or secrets.token_hex(16)
    digest = hashlib.sha256(f"{salt}${secret}".encode()).hexdigest()
    return f"{ALGORITHM}${salt}${digest}"


def verify_secret(secret: str, stored: str) -> bool:
    """Whether `secret` matches the stored hash (constant-time comparison)."""
    try:
        algorithm, salt, _digest = stored.split("$", 2)
    except ValueError:
        return False
    if algorithm != ALGORITHM or not secret:
        return False
    return hmac.compare_digest(hash_secret(secret, salt), stored)
