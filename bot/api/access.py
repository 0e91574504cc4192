"""Who is calling the API: HTTP basic (A1111's `--api-auth user:pass,…`, from
AIDRAW_API_AUTH) or a bearer token (AIDRAW_API_TOKEN). Each credential is its own requester
("api:NAME", "api:token") for fair share and caps; with none configured the API answers
loopback callers only, as "api:local". Credentials come from the environment only."""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from dataclasses import dataclass, field

from aiohttp import web
from yarl import URL

from bot.api.errors import ApiError
from bot.settings import SettingsError, env_token

AUTH_ENV = "AIDRAW_API_AUTH"
TOKEN_ENV = "AIDRAW_API_TOKEN"
LOCAL = "api:local"
TOKEN_USER = "api:token"
_UNAUTHORIZED = {"WWW-Authenticate": 'Basic realm="aidraw API"'}


@dataclass(frozen=True)
class Credentials:
    """The configured users (name → password) and bearer token; empty: loopback only."""

    users: dict[str, str] = field(default_factory=dict)
    token: str | None = None

    @property
    def required(self) -> bool:
        return bool(self.users) or self.token is not None

    @classmethod
    def from_env(cls) -> Credentials:
        """AIDRAW_API_AUTH ("user:pass,user2:pass2") and AIDRAW_API_TOKEN; a malformed pair
        stops start-up (naming the variable, never its value)."""
        users: dict[str, str] = {}
        for pair in (env_token(AUTH_ENV) or "").split(","):
            if not pair.strip():
                continue
            name, colon, password = pair.strip().partition(":")
            if not colon or not name or not password:
                raise SettingsError(
                    f"{AUTH_ENV} must be user:password pairs separated by commas "
                    "(as A1111's --api-auth)"
                )
            users[name] = password
        return cls(users, env_token(TOKEN_ENV))

    def requester(self, request: web.Request, local_names: set[str | None]) -> str:
        """The caller's requester id, or ApiError 401/403."""
        if not self.required:
            # Another site's page may reach 127.0.0.1 through a DNS name it controls.
            if URL(f"http://{request.host}").host not in local_names:
                raise ApiError(403, "unknown Host: the API without credentials is local only")
            return LOCAL
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.token is not None and _same(value, self.token):
            return TOKEN_USER
        if scheme.lower() == "basic":
            try:
                name, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, ValueError):
                name, password = "", ""
            known = self.users.get(name)
            if known is not None and _same(password, known):
                return f"api:{name}"
        raise ApiError(
            401, "Incorrect or missing credentials (HTTP basic or bearer)", headers=_UNAUTHORIZED
        )


def check_origin(request: web.Request) -> None:
    """Writes from another site's page are refused, as the web chat refuses them."""
    origin = request.headers.get("Origin")
    if origin is not None and URL(origin).authority != URL(f"http://{request.host}").authority:
        raise ApiError(403, "cross-origin request refused")


def is_loopback(host: str) -> bool:
    """Whether a listening address is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
