"""SQLAlchemy's lazy loading in plain async code, with corolet.portal.

Under ``AsyncSession``, touching a relationship that was not loaded yet (``user.addresses``)
makes SQLAlchemy run SQL from synchronous code, so in a plain asyncio task it raises
``MissingGreenlet: greenlet_spawn has not been called``. corolet.portal steps every task of the
loop inside a greenlet that SQLAlchemy recognises as its own kind, so the same line simply
loads. This script shows both: the error in a loop without portals, the lazy load with them
(``corolet.portal.run(main)`` in place of ``asyncio.run(main)``; ``corolet.portal.install()``
inside a running loop does the same for the tasks created after it).

Needs ``sqlalchemy`` and ``aiosqlite`` (in tests/requirements.txt); the database is a file in
a temporary directory.
"""

from __future__ import annotations

import corolet

corolet.install()  # SQLAlchemy imports greenlet: make that corolet, before it is imported

import asyncio  # noqa: E402
import gc  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402

import corolet.portal  # noqa: E402
from sqlalchemy import ForeignKey, select  # noqa: E402
from sqlalchemy.exc import MissingGreenlet, StatementError  # noqa: E402
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship  # noqa: E402


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    addresses: Mapped[list[Address]] = relationship(back_populates="user")  # lazy="select"


class Address(Base):
    __tablename__ = "addresses"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str]
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    user: Mapped[User] = relationship(back_populates="addresses")


def describe(user: User) -> str:
    """Ordinary synchronous code, as a template or a serializer would be."""
    return f"{user.name}: " + ", ".join(sorted(a.email for a in user.addresses))


async def main(url: str, create: bool) -> str:
    engine = create_async_engine(url)
    if create:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
    Session = async_sessionmaker(engine, expire_on_commit=False)
    try:
        if create:
            async with Session() as session, session.begin():
                emails = ["ada@example.org", "ada@work.example"]
                session.add(User(name="ada", addresses=[Address(email=e) for e in emails]))
        async with Session() as session:
            user = (await session.execute(select(User))).scalar_one()
            return describe(user)  # the lazy load of user.addresses happens in here
    finally:
        await engine.dispose()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        url = "sqlite+aiosqlite:///" + os.path.join(tmp, "example.sqlite")
        with warnings.catch_warnings():
            # SQLAlchemy's failing path leaves the driver's cursor() coroutine un-awaited.
            warnings.simplefilter("ignore", RuntimeWarning)
            try:
                asyncio.run(main(url, create=True))
            except (MissingGreenlet, StatementError) as exc:  # SQLAlchemy 2.1 wraps it
                print("asyncio.run:        MissingGreenlet:", str(exc).splitlines()[0][:60])
            gc.collect()
        print("corolet.portal.run:", corolet.portal.run(main(url, create=False)))
