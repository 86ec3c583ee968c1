"""Node rows (`nodes`): written by heartbeats, read by every replica's fleet registry."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.tables import Node, ServerProfile


async def list_nodes(session: AsyncSession) -> list[Node]:
    """Every node ever seen, by name."""
    query = select(Node).order_by(Node.name)
    return list((await session.exec(query)).all())


async def record_heartbeat(
    session: AsyncSession, name: str, url: str, status: dict[str, Any], seen: datetime
) -> Node:
    """Insert or update the node `name`. Two replicas inserting the same new node at once:
    the loser's unique-name error is retried as an update."""
    for _ in range(2):
        node = (await session.exec(select(Node).where(Node.name == name))).first()
        if node is None:
            node = Node(name=name, url=url, last_seen=seen, status=status)
        else:
            node.url, node.last_seen, node.status = url, seen, status
        session.add(node)
        try:
            await session.commit()
            return node
        except IntegrityError:
            await session.rollback()
    raise RuntimeError(f"could not record the heartbeat of node {name!r}")


async def delete_node(session: AsyncSession, name: str) -> bool:
    """Forget a node (it comes back with its next heartbeat); whether it was there."""
    node = (await session.exec(select(Node).where(Node.name == name))).first()
    if node is None:
        return False
    await session.delete(node)
    await session.commit()
    return True


async def keep_profile(session: AsyncSession, profile: ServerProfile) -> ServerProfile:
    """On a node: insert or overwrite a profile the gateway gave it (same id as the gateway's),
    so the node still has it after a restart, before its first heartbeat."""
    kept = await session.merge(profile)
    await session.commit()
    return kept
