"""API keys: which project a bearer token belongs to.

A token belongs to exactly one project; the service never takes a project from a path or a body.
Keys come from:

- ``MEMORY_API_KEYS``: comma-separated ``project_id:token`` pairs (simple setups; the tokens sit
  in the environment);
- ``MEMORY_API_KEYS_FILE``: a file of ``project_id sha256-hex`` lines (``#`` comments), written by
  ``memory-engine api-keys create --project P``, which prints the token once; the file holds only
  digests.

Lookups hash the presented token with SHA-256 and compare it with *every* known digest with
:func:`hmac.compare_digest` (no early exit), so the time taken says nothing about which digest,
or how much of one, matched.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from memory_engine.errors import ConfigError
from memory_engine.keys import PROJECT_ID_PATTERN

__all__ = [
    "API_KEYS_ENV",
    "API_KEYS_FILE_ENV",
    "ApiKeys",
    "TOKEN_BYTES",
    "bearer_token",
    "create_api_key",
    "token_digest",
]

API_KEYS_ENV = "MEMORY_API_KEYS"
API_KEYS_FILE_ENV = "MEMORY_API_KEYS_FILE"
TOKEN_BYTES = 32
"""Random bytes in a generated token (256 bits; printed URL-safe base64, 43 characters)."""
_FILE_MODE = 0o600


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _check_project(project_id: str, source: str) -> str:
    if not PROJECT_ID_PATTERN.fullmatch(project_id):
        raise ConfigError(
            f"project id {project_id[:64]!a} is invalid: 1-64 of letters, digits, _ . -",
            source=source,
        )
    return project_id


@dataclass(frozen=True)
class ApiKeys:
    """Known tokens, as (SHA-256 digest, project) pairs. Never holds a token in clear."""

    entries: tuple[tuple[bytes, str], ...]

    def __len__(self) -> int:
        return len(self.entries)

    def project_for(self, token: str | None) -> str | None:
        """The project ``token`` belongs to, or None. Constant time in the token and in which
        entry matches: every entry is compared."""
        if not token:
            return None
        digest = token_digest(token)
        found: str | None = None
        for known, project in self.entries:
            if hmac.compare_digest(digest, known) and found is None:
                found = project
        return found

    @classmethod
    def parse_env(cls, value: str) -> ApiKeys:
        """``project_id:token[,project_id:token...]`` (whitespace around pairs ignored)."""
        entries: list[tuple[bytes, str]] = []
        for n, pair in enumerate(p.strip() for p in value.split(",")):
            if not pair:
                continue
            project, sep, token = pair.partition(":")
            if not sep or not token:
                # Never echo the pair: it holds a token.
                raise ConfigError(f"entry {n + 1} is not project_id:token", source=API_KEYS_ENV)
            entries.append((token_digest(token), _check_project(project, API_KEYS_ENV)))
        return cls(tuple(entries))

    @classmethod
    def parse_file(cls, path: Path) -> ApiKeys:
        source = f"{API_KEYS_FILE_ENV}={path}"
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise ConfigError(
                f"cannot read the API keys file: {exc.strerror}", source=source
            ) from exc
        entries: list[tuple[bytes, str]] = []
        for lineno, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ConfigError(f"line {lineno}: expected 'project_id sha256-hex'", source=source)
            project, hexdigest = parts
            try:
                digest = bytes.fromhex(hexdigest)
            except ValueError:
                digest = b""
            if len(digest) != hashlib.sha256().digest_size:
                raise ConfigError(f"line {lineno}: not a SHA-256 hex digest", source=source)
            entries.append((digest, _check_project(project, source)))
        return cls(tuple(entries))

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ApiKeys:
        """Both sources together (either may be unset). Refuses to build an empty set: a
        server without keys would answer 401 to everything, a misconfiguration to say at once."""
        env = dict(os.environ) if env is None else env
        entries: list[tuple[bytes, str]] = []
        if env.get(API_KEYS_ENV):
            entries += cls.parse_env(env[API_KEYS_ENV]).entries
        if env.get(API_KEYS_FILE_ENV):
            entries += cls.parse_file(Path(env[API_KEYS_FILE_ENV])).entries
        if not entries:
            raise ConfigError(
                f"no API keys: set {API_KEYS_ENV} (project_id:token,...) or {API_KEYS_FILE_ENV} "
                "(see `memory-engine api-keys create`)"
            )
        return cls(tuple(entries))

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]]) -> ApiKeys:
        """From ``(project_id, token)`` pairs (tests, embedding applications)."""
        return cls(tuple((token_digest(t), _check_project(p, "api keys")) for p, t in pairs))


def create_api_key(path: Path, project_id: str) -> str:
    """Generate a token for ``project_id``, append its digest to ``path`` (created 0600) and
    return the token, which is stored nowhere else."""
    _check_project(project_id, "--project")
    token = secrets.token_urlsafe(TOKEN_BYTES)
    line = f"{project_id} {token_digest(token).hex()}\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, _FILE_MODE)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(line)
    return token


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
