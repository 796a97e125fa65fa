"""API keys: who may call what.

Two roles. ``client`` may allocate, redeem and read (coupons, stats, metrics); ``admin``
may also upload, purge and read the audit trail. A caller sends ``Authorization: Bearer
<key>``. Keys are kept only as SHA-256 digests and compared in constant time, each
presented key against every configured one, so the answer's timing says nothing about
how close a guess was. With no key configured at all, every route is open (local
development); the service warns at start-up.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
from collections.abc import Iterable

from starlette.requests import Request

from ..errors import Forbidden, Unauthenticated
from ..pool.keyed import KEY_ID
from .middleware import note

_BEARER = re.compile(r"Bearer +(\S+)", re.IGNORECASE)
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="coupon-pool"'}


class Role(enum.IntEnum):
    """Ordered: a role may do everything a lower one may."""

    CLIENT = 1
    ADMIN = 2


def key_id(key: str) -> str:
    """A short, safe-to-log name of a key: the start of its SHA-256, never the key."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


class ApiKeys:
    def __init__(self, admin: Iterable[str], client: Iterable[str]) -> None:
        self._digests = [(_digest(k), Role.ADMIN, key_id(k)) for k in admin]
        self._digests += [(_digest(k), Role.CLIENT, key_id(k)) for k in client]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def identify(self, authorization: str | None) -> tuple[Role, str]:
        """The role and key id of an Authorization header, or Unauthenticated."""
        match = _BEARER.fullmatch(authorization.strip()) if authorization else None
        if match is None:
            raise Unauthenticated("send an API key as 'Authorization: Bearer <key>'", headers=_CHALLENGE)
        presented = _digest(match.group(1))
        found: tuple[Role, str] | None = None
        for digest, role, kid in self._digests:  # no early exit: every key is compared
            if hmac.compare_digest(digest, presented):
                found = (role, kid)
        if found is None:
            raise Unauthenticated("this API key is not valid", headers=_CHALLENGE)
        return found

    def admit(self, request: Request, given: list[bytes], needs: Role) -> None:
        """Let the request through for ``needs``, or raise Unauthenticated or Forbidden;
        ``given``: the raw value of each of its Authorization headers."""
        if len(given) > 1:  # which one would count? A proxy and the service could disagree
            raise Unauthenticated("send one Authorization header, not several", headers=_CHALLENGE)
        role, kid = self.identify(given[0].decode("latin-1") if given else None)
        note(request, key_id=kid)
        request.scope[KEY_ID] = kid  # the scope of its Idempotency-Keys
        if role < needs:
            raise Forbidden(f"this route needs an {needs.name.lower()} key")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
