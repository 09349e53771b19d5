"""An authentication service written once, in sync code, with both a sync and an async API.

The service's logic (look the user up, verify the password hash, count failures, lock the
account, issue a token) is plain synchronous code. Where it needs the credential store it calls
``store.lookup(name)``, and the store may be synchronous (a dict) or asynchronous (a database
driver, here simulated with ``asyncio.sleep``). When the store hands back an awaitable, the
logic waits for it with ``await_only``, which works because the async API runs the logic through
``greenlet_spawn``:

- ``await service.login_async(name, password)``: for async callers; the event loop keeps serving
  other tasks while the store is awaited.
- ``service.login(name, password)``: for sync callers. With a sync store it just runs; with an
  async store and no event loop running it starts one (``asyncio.run``); inside a bridge greenlet
  (sync code already running under ``greenlet_spawn``) it runs in place.

Run: ``python examples/auth_service.py``
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import secrets
from collections.abc import Awaitable
from dataclasses import dataclass, field

from corolet.bridge import await_only, greenlet_spawn, in_greenlet

ITERATIONS = 1_000  # PBKDF2 rounds: low, to keep the example fast
MAX_FAILURES = 3


def hash_password(password: str, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, ITERATIONS)


@dataclass
class Credentials:
    salt: bytes
    digest: bytes

    @classmethod
    def for_password(cls, password: str) -> Credentials:
        salt = secrets.token_bytes(16)
        return cls(salt, hash_password(password, salt))


class SyncStore:
    """A credential store with a synchronous lookup."""

    def __init__(self, users: dict[str, str]) -> None:
        self._rows = {name: Credentials.for_password(pw) for name, pw in users.items()}

    def lookup(self, name: str) -> Credentials | None:
        return self._rows.get(name)


class AsyncStore(SyncStore):
    """The same store behind an asynchronous lookup, as a database driver would offer."""

    in_flight = 0
    peak_in_flight = 0

    async def lookup(self, name: str) -> Credentials | None:  # type: ignore[override]
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        await asyncio.sleep(0.001)  # the round trip to the database
        self.in_flight -= 1
        return self._rows.get(name)


class AuthError(Exception):
    pass


@dataclass
class AuthService:
    store: SyncStore
    failures: dict[str, int] = field(default_factory=dict)

    # --- the logic, written once, synchronous ---------------------------------------------

    def _login(self, name: str, password: str) -> str:
        if self.failures.get(name, 0) >= MAX_FAILURES:
            raise AuthError(f"{name}: account locked")
        row = _resolve(self.store.lookup(name))
        if row is None or not hmac.compare_digest(hash_password(password, row.salt), row.digest):
            self.failures[name] = self.failures.get(name, 0) + 1
            raise AuthError(f"{name}: bad credentials ({self.failures[name]} failure(s))")
        self.failures.pop(name, None)
        return secrets.token_hex(16)

    # --- the two APIs -----------------------------------------------------------------------

    async def login_async(self, name: str, password: str) -> str:
        return await greenlet_spawn(self._login, name, password)

    def login(self, name: str, password: str) -> str:
        if in_greenlet() or not _is_async(self.store.lookup):
            return self._login(name, password)
        return asyncio.run(self.login_async(name, password))


def _resolve(value: Credentials | None | Awaitable[Credentials | None]) -> Credentials | None:
    """The value itself from a sync store; the awaited value from an async one."""
    if inspect.isawaitable(value):
        return await_only(value)
    return value


def _is_async(fn: object) -> bool:
    return inspect.iscoroutinefunction(fn)


USERS = {"alice": "correct horse", "bob": "battery staple"}
ATTEMPTS = [
    ("alice", "correct horse"),
    ("bob", "wrong"),
    ("bob", "battery staple"),
    ("mallory", "guess"),
]


def report(api: str, store: str, name: str, outcome: str) -> None:
    print(f"{api:<5} API, {store:<5} store: {name:<8} -> {outcome}")


def attempt(fn, name: str, password: str) -> str:
    try:
        token = fn(name, password)
    except AuthError as exc:
        return f"refused ({exc})"
    return f"ok (token of {len(token)} hex digits)"


async def attempt_async(fn, name: str, password: str) -> str:
    try:
        token = await fn(name, password)
    except AuthError as exc:
        return f"refused ({exc})"
    return f"ok (token of {len(token)} hex digits)"


async def async_callers(service: AuthService, label: str) -> None:
    for name, password in ATTEMPTS:
        report("async", label, name, await attempt_async(service.login_async, name, password))


def main() -> None:
    for label, store in (("sync", SyncStore(USERS)), ("async", AsyncStore(USERS))):
        service = AuthService(store)
        for name, password in ATTEMPTS:
            report("sync", label, name, attempt(service.login, name, password))
        asyncio.run(async_callers(AuthService(store), label))

    # Many concurrent logins against the async store: the lookups overlap on one event loop.
    store = AsyncStore(USERS)
    service = AuthService(store)

    async def many() -> list[str]:
        return await asyncio.gather(
            *(service.login_async("alice", "correct horse") for _ in range(50))
        )

    tokens = asyncio.run(many())
    print(
        f"50 concurrent async logins: {len(set(tokens))} distinct tokens, "
        f"{store.peak_in_flight} lookups in flight at once"
    )

    # Sync code that already runs under greenlet_spawn calls the sync API, which runs in place
    # and awaits the async store through the bridge.
    async def sync_code_under_the_bridge() -> str:
        return await greenlet_spawn(attempt, service.login, "bob", "battery staple")

    print("sync API inside greenlet_spawn:", asyncio.run(sync_code_under_the_bridge()))

    # Lockout is shared by both APIs: the state lives in the service, not in either API.
    service = AuthService(AsyncStore(USERS))
    outcomes = [attempt(service.login, "bob", "nope") for _ in range(MAX_FAILURES)]
    outcomes.append(asyncio.run(attempt_async(service.login_async, "bob", "battery staple")))
    print("lockout:", outcomes[-1])


if __name__ == "__main__":
    main()
