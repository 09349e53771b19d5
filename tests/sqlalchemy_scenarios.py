"""SQLAlchemy's asyncio ORM on corolet: the scenarios ``test_sqlalchemy.py`` runs in children.

Run as ``python sqlalchemy_scenarios.py SCENARIO DATABASE_FILE``. The first thing it does is
``corolet.install()``, before SQLAlchemy is imported (SQLAlchemy 2.0 imports greenlet as soon as
it is imported itself, and on Python 3.10 pip installs the real greenlet with it), so every
greenlet SQLAlchemy makes is corolet's. Each scenario checks what it expects with ``assert`` and
prints ``ok <scenario>`` at the end; any failure is a traceback and a non-zero exit.

The driver is the real aiosqlite on a file database, through ``sqlite+aiosqlite://``.
"""

from __future__ import annotations

import sys

import corolet

corolet.install()

import asyncio  # noqa: E402
import contextvars  # noqa: E402

import greenlet  # noqa: E402  (corolet, after install())
import sqlalchemy  # noqa: E402
from corolet import bridge  # noqa: E402
from sqlalchemy import ForeignKey, String, event, func, select, text  # noqa: E402
from sqlalchemy.exc import IntegrityError, MissingGreenlet, StatementError  # noqa: E402
from sqlalchemy.ext.asyncio import (  # noqa: E402
    AsyncAttrs,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import (  # noqa: E402
    DeclarativeBase,
    Mapped,
    mapped_column,
    relationship,
    selectinload,
)
from sqlalchemy.util import concurrency as sa_concurrency  # noqa: E402

# SQLAlchemy's own bridge: await_() in 2.1, await_only() in 2.0 (2.1 keeps it as an alias).
sa_await = getattr(sa_concurrency, "await_", None) or sa_concurrency.await_only
sa_spawn = sa_concurrency.greenlet_spawn

REQUEST_ID = contextvars.ContextVar("request_id", default=None)
TIMEOUT_ERRORS = (asyncio.TimeoutError, TimeoutError)


class Base(AsyncAttrs, DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    addresses: Mapped[list[Address]] = relationship(back_populates="user")


class Address(Base):
    __tablename__ = "addresses"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    user: Mapped[User] = relationship(back_populates="addresses")


def check_greenlet_is_corolets() -> str:
    """Runs inside SQLAlchemy's greenlet: it must be a corolet greenlet, nothing else."""
    current = greenlet.getcurrent()
    assert isinstance(current, corolet.greenlet), type(current).__mro__
    assert getattr(current, "__sqlalchemy_greenlet_provider__", False)
    assert bridge.in_greenlet()
    return type(current).__name__


def check_no_real_greenlet_loaded() -> None:
    assert getattr(sys.modules["greenlet"], "__corolet__", False), sys.modules["greenlet"]
    assert sys.modules["greenlet._greenlet"] is corolet._corolet
    real = [
        name
        for name, module in list(sys.modules.items())
        if name.startswith("greenlet")
        and "site-packages" in str(getattr(module, "__file__", "") or "")
    ]
    assert not real, f"the real greenlet got imported: {real}"


def make_engine(db: str, **kwargs):
    return create_async_engine(f"sqlite+aiosqlite:///{db}", **kwargs)


async def create_schema(engine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)


async def scenario_orm(db: str) -> None:
    """Create tables, insert, query; SQLAlchemy's greenlets are corolet's; context shared."""
    engine = make_engine(db)
    seen_in_hook = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def hook(conn, cursor, statement, parameters, context, executemany):
        # Runs in SQLAlchemy's spawned greenlet, in the calling task's context.
        seen_in_hook.append((REQUEST_ID.get(), type(greenlet.getcurrent())))

    REQUEST_ID.set("req-1")
    await create_schema(engine)
    Session = async_sessionmaker(engine, expire_on_commit=False)
    async with Session() as session:
        async with session.begin():
            session.add_all(
                [
                    User(name="ada", addresses=[Address(email="ada@example.org")]),
                    User(name="bob", addresses=[Address(email="bob@example.org")]),
                ]
            )
        kind = await session.run_sync(lambda sync_session: check_greenlet_is_corolets())
        users = (
            await session.scalars(
                select(User).options(selectinload(User.addresses)).order_by(User.name)
            )
        ).all()
        assert [u.name for u in users] == ["ada", "bob"]
        assert [a.email for a in users[0].addresses] == ["ada@example.org"]
        # A lazy load done right: through awaitable_attrs.
        address = await session.scalar(select(Address).where(Address.email.like("bob%")))
        assert (await address.awaitable_attrs.user).name == "bob"
    assert seen_in_hook and all(rid == "req-1" for rid, _ in seen_in_hook), seen_in_hook
    assert all(issubclass(t, corolet.greenlet) for _, t in seen_in_hook)
    await engine.dispose()
    check_no_real_greenlet_loaded()
    print(f"SQLAlchemy {sqlalchemy.__version__}: greenlet type {kind}")


async def scenario_rollback(db: str) -> None:
    """An exception inside a transaction rolls it back; an IntegrityError travels the bridge."""
    engine = make_engine(db)
    await create_schema(engine)
    Session = async_sessionmaker(engine)
    async with Session() as session:
        async with session.begin():
            session.add(User(name="kept"))
    try:
        async with Session() as session:
            async with session.begin():
                session.add(User(name="discarded"))
                await session.flush()
                raise ValueError("application error")
    except ValueError:
        pass
    else:
        raise AssertionError("the ValueError was swallowed")
    async with Session() as session:
        session.add(User(name="kept"))  # violates the unique constraint
        try:
            await session.commit()
        except IntegrityError as exc:
            assert "UNIQUE" in str(exc.orig), exc
            await session.rollback()
        else:
            raise AssertionError("no IntegrityError")
        names = (await session.scalars(select(User.name))).all()
        assert names == ["kept"], names
    await engine.dispose()


async def scenario_concurrent(db: str) -> None:
    """Many sessions under asyncio.gather, fewer pooled connections: the pool waits via the
    bridge, each session's work stays its own."""
    engine = make_engine(db, pool_size=3, max_overflow=0, connect_args={"timeout": 30})
    await create_schema(engine)
    Session = async_sessionmaker(engine, expire_on_commit=False)

    async def worker(i: int) -> tuple[str, str | None, int]:
        REQUEST_ID.set(f"worker-{i}")
        async with Session() as session:
            async with session.begin():
                session.add(User(name=f"user-{i}"))
            await asyncio.sleep(0)
            name = await session.scalar(select(User.name).where(User.name == f"user-{i}"))
            count = await session.scalar(select(func.count()).select_from(User))
            return name, REQUEST_ID.get(), count

    results = await asyncio.gather(*(worker(i) for i in range(30)))
    assert [r[0] for r in results] == [f"user-{i}" for i in range(30)]
    assert [r[1] for r in results] == [f"worker-{i}" for i in range(30)]
    assert all(1 <= r[2] <= 30 for r in results)
    assert engine.pool.checkedout() == 0
    await engine.dispose()


async def scenario_cancel(db: str) -> None:
    """A timeout on a session waiting for a pooled connection leaves the pool consistent."""
    engine = make_engine(db, pool_size=1, max_overflow=0, pool_timeout=30)
    await create_schema(engine)
    Session = async_sessionmaker(engine)
    holder = await engine.connect()  # takes the only connection
    async with Session() as session:
        try:
            await asyncio.wait_for(session.execute(select(User)), 0.1)
        except TIMEOUT_ERRORS:
            pass
        else:
            raise AssertionError("the session did not wait for the pool")
    if sys.version_info >= (3, 11):
        async with Session() as session:
            try:
                async with asyncio.timeout(0.1):
                    await session.execute(select(User))
            except TimeoutError:
                pass
            else:
                raise AssertionError("the session did not wait for the pool")
    assert engine.pool.checkedout() == 1
    await holder.close()
    async with Session() as session:
        assert (await session.execute(text("select 41 + 1"))).scalar() == 42
    assert engine.pool.checkedout() == 0
    assert asyncio.all_tasks() == {asyncio.current_task()}
    await engine.dispose()


async def scenario_sqlalchemy_await_in_corolet_spawn(db: str) -> None:
    """SQLAlchemy's await inside corolet's greenlet_spawn, directly and through its sync API."""
    engine = make_engine(db)
    await create_schema(engine)

    async def value(v):
        await asyncio.sleep(0)
        return v

    assert await bridge.greenlet_spawn(lambda: sa_await(value("direct"))) == "direct"
    assert await bridge.greenlet_spawn(sa_concurrency.in_greenlet) is True

    async with engine.connect() as conn:
        sync_conn = conn.sync_connection

        def sync_work() -> int:
            # SQLAlchemy's sync Connection over aiosqlite awaits with its own await_only.
            sync_conn.execute(text("insert into users (name) values ('from corolet spawn')"))
            return sync_conn.execute(text("select count(*) from users")).scalar()

        assert await bridge.greenlet_spawn(sync_work) == 1
        await conn.commit()
    await engine.dispose()


async def scenario_corolet_await_in_sqlalchemy_spawn(db: str) -> None:
    """corolet's await_only inside SQLAlchemy's greenlet_spawn (and run_sync), nested both ways."""
    engine = make_engine(db)
    await create_schema(engine)

    async def value(v):
        await asyncio.sleep(0)
        return v

    assert await sa_spawn(lambda: bridge.await_only(value("direct"))) == "direct"
    assert await sa_spawn(bridge.in_greenlet) is True

    def inner_sync() -> str:  # corolet's greenlet, SQLAlchemy's await
        return sa_await(value("inner"))

    def outer_sync() -> str:  # SQLAlchemy's greenlet, corolet's await of corolet's spawn
        return bridge.await_only(bridge.greenlet_spawn(inner_sync)) + "+outer"

    assert await sa_spawn(outer_sync) == "inner+outer"

    async with AsyncSession(engine) as session:

        def in_run_sync(sync_session) -> str:
            check_greenlet_is_corolets()
            bridge.await_only(asyncio.sleep(0))
            sync_session.add(User(name="via run_sync"))
            sync_session.flush()
            return bridge.await_only(value("run_sync"))

        assert await session.run_sync(in_run_sync) == "run_sync"
        await session.commit()
        assert await session.scalar(select(func.count()).select_from(User)) == 1
    await engine.dispose()


async def scenario_missing_greenlet(db: str) -> None:
    """SQLAlchemy's own MissingGreenlet still fires for IO outside the bridge, and corolet's
    keeps SQLAlchemy's message prefix."""
    engine = make_engine(db)
    await create_schema(engine)
    async with AsyncSession(engine) as session:  # expire_on_commit=True: the classic trap
        user = User(name="expired")
        session.add(user)
        await session.commit()
        try:
            user.name  # noqa: B018  (a lazy refresh from the event loop's code)
        except (MissingGreenlet, StatementError) as exc:  # 2.1 wraps it in a StatementError
            assert "greenlet_spawn has not been called" in str(exc), exc
        else:
            raise AssertionError("no MissingGreenlet")
    try:
        bridge.await_only(asyncio.sleep(0))
    except bridge.MissingGreenlet as exc:
        assert str(exc).startswith(
            "greenlet_spawn has not been called; can't call await_only() here."
        )
    await engine.dispose()


async def scenario_portal_lazy_load(db: str) -> None:
    """corolet.portal: a lazy-loaded relationship touched in plain async code raises
    MissingGreenlet in a task without a portal, and loads in every task created after
    corolet.portal.install(), concurrently, in sync helpers too, in the task's context."""
    import corolet.portal

    engine = make_engine(db)
    await create_schema(engine)
    Session = async_sessionmaker(engine, expire_on_commit=False)
    async with Session() as session, session.begin():
        for n in range(5):
            emails = [f"u{n}-{k}@example.org" for k in range(n + 1)]
            session.add(User(name=f"u{n}", addresses=[Address(email=e) for e in emails]))

    def emails_of(user: User) -> list[str]:  # sync code, deep in a call chain
        return sorted(address.email for address in user.addresses)

    async def load(n: int) -> tuple[list[str], str | None, bool]:
        REQUEST_ID.set(f"req-{n}")
        async with Session() as session:
            result = await session.execute(select(User).where(User.name == f"u{n}"))
            user = result.scalar_one()
            direct = [address.email for address in user.addresses]  # the lazy load
            assert sorted(direct) == emails_of(user)
            await asyncio.sleep(0)
            return emails_of(user), REQUEST_ID.get(), corolet.portal.has_portal()

    try:
        await asyncio.create_task(load(0))
    except (MissingGreenlet, StatementError) as exc:  # 2.1 wraps it in a StatementError
        assert "greenlet_spawn has not been called" in str(exc), exc
    else:
        raise AssertionError("a lazy load without a portal raised no MissingGreenlet")

    corolet.portal.install()
    results = await asyncio.gather(*(asyncio.create_task(load(n)) for n in range(5)))
    for n, (emails, request_id, portal) in enumerate(results):
        assert emails == [f"u{n}-{k}@example.org" for k in range(n + 1)], emails
        assert request_id == f"req-{n}" and portal
    # SQLAlchemy's own await_ sees a spawned greenlet: the portal's.
    check = await asyncio.create_task(_in_portal_greenlet())
    assert check == "PortalGreenlet", check
    corolet.portal.uninstall()
    try:
        await asyncio.create_task(load(1))
    except (MissingGreenlet, StatementError) as exc:
        assert "greenlet_spawn has not been called" in str(exc), exc
    else:
        raise AssertionError("no MissingGreenlet after uninstall()")
    await engine.dispose()


async def _in_portal_greenlet() -> str:
    assert sa_await(asyncio.sleep(0, "x")) == "x"
    return check_greenlet_is_corolets()


SCENARIOS = {
    name[len("scenario_") :]: fn for name, fn in globals().items() if name.startswith("scenario_")
}


def main(argv: list[str]) -> int:
    name, db = argv[1], argv[2]
    asyncio.run(SCENARIOS[name](db))
    print(f"ok {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
