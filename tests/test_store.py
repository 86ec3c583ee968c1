"""Database writes go routes -> store -> tables: the store's rules, and no SQL outside it.

The store functions run on a real (temporary) SQLite database migrated like the gateway's.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway import store
from gateway.errors import Conflict
from gateway.tables import ServerProfile
from gateway.tokens import hash_api_key

ROOT = Path(__file__).resolve().parents[1]
# Every module but the database layer itself reaches the database only through gateway.store:
# routes, jobs (downloads), the server manager (orphans), auth, the CLI.
DATABASE_LAYER = ("gateway/store/", "gateway/db.py", "gateway/tables.py", "gateway/migrations/")
STORE_CALLERS = [
    path
    for path in sorted([*(ROOT / "admin").rglob("*.py"), *(ROOT / "gateway").rglob("*.py")])
    if not path.relative_to(ROOT).as_posix().startswith(DATABASE_LAYER)
]
# Names a caller may import from the SQL libraries: types for its signatures, not queries.
SQL_TYPES = {"AsyncSession", "async_sessionmaker", "AsyncEngine"}
SQL_MODULES = ("sqlalchemy", "sqlmodel")
SESSION_CALLS = {"add", "commit", "delete", "exec", "execute", "flush", "get", "refresh"}


def sql_in(path: Path) -> list[str]:
    """SQL libraries imported, and queries run on a `session`, in one module."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in SQL_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in SQL_MODULES:
            names = [a.name for a in node.names]
            if not set(names) <= SQL_TYPES:
                found.append(f"from {node.module} import {', '.join(names)}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "session"
            and node.func.attr in SESSION_CALLS
        ):
            found.append(f"session.{node.func.attr}() at line {node.lineno}")
    return found


def test_nothing_outside_the_store_runs_sql_of_its_own() -> None:
    assert len(STORE_CALLERS) > 50  # the walk found the tree
    offenders = {p.relative_to(ROOT).as_posix(): sql_in(p) for p in STORE_CALLERS}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_sql_check_sees_queries(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from sqlmodel import select\n"
        "from sqlmodel.ext.asyncio.session import AsyncSession\n"
        "async def f(session):\n    await session.commit()\n    session.add(1)\n"
    )
    assert sorted(sql_in(sample)) == [
        "from sqlmodel import select",
        "session.add() at line 5",
        "session.commit() at line 4",
    ]


async def test_profiles_keep_unique_names(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session:
        first = await store.profiles.add_profile(session, ServerProfile(name="a", model_path="x"))
        assert first.id is not None
    async with sessions() as session:
        with pytest.raises(Conflict) as caught:
            await store.profiles.add_profile(session, ServerProfile(name="a", model_path="y"))
        assert caught.value.code == "name_taken"
    async with sessions() as session:
        loaded = await store.profiles.get_profile(session, first.id)
        assert loaded is not None
        before = loaded.updated_at
        loaded.model_path = "z"
        saved = await store.profiles.save_profile(session, loaded)
        assert saved.updated_at >= before
        await store.profiles.delete_profile(session, first.id)
        await store.profiles.delete_profile(session, first.id)  # twice is not an error
        assert await store.profiles.get_profile(session, first.id) is None


async def test_keys_store_a_hash_and_list_by_owner(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as session:
        admin = await store.users.register_user(session, "a@example.com", "correct horse 1")
        other = await store.users.register_user(session, "b@example.com", "correct horse 2")
        assert admin.id is not None
        assert other.id is not None
        key, secret = await store.keys.create_key(
            session, user_id=admin.id, name="ci", models=["m2", "m1", "m2"], expires_in_days=1
        )
        await store.keys.create_key(session, user_id=other.id, name="theirs")
        assert key.key_hash == hash_api_key(secret)
        assert secret not in key.key_hash
        assert key.models == ["m1", "m2"]
        assert key.expires_at is not None
        mine = await store.keys.list_keys(session, user_id=admin.id)
        assert [(k.name, u.email) for k, u in mine] == [("ci", "a@example.com")]
        assert len(await store.keys.list_keys(session, user_id=None)) == 2
        assert key.id is not None
        await store.keys.delete_key(session, key)
        assert await store.keys.get_key(session, key.id) is None
        assert [u.email for u in await store.users.list_users(session)] == [
            "a@example.com",
            "b@example.com",
        ]
