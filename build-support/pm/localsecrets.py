"""Local stand-ins for secrets, generated once per profile and kept in a mode-0600 file.

They are used only where the caller's environment does not provide the real variable, and
their values are never printed by the dev commands.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class LocalSecrets:
    """API key list, JWT signing secret and the OpenBao dev root token of one profile."""

    api_keys: str
    jwt_secret: str
    vault_token: str


def load_or_create(path: Path) -> LocalSecrets:
    """The profile's local secrets, generating and storing them on first use."""
    if path.exists():
        return LocalSecrets(**json.loads(path.read_text()))
    generated = LocalSecrets(
        api_keys=f"pm_local_{secrets.token_urlsafe(24)}",
        jwt_secret=secrets.token_hex(32),
        vault_token=f"pm-local-{secrets.token_hex(16)}",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(generated), out, indent=2)
        out.write("\n")
    return generated
