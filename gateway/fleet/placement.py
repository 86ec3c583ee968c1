"""Pure placement: which node serves a request for a profile, from the nodes' reported state.

Like `gateway/serving/policy.py`, a plain function of plain values (no I/O, no clock), so every
rule is tested synchronously. The order of preference:
1. a node where the profile is ready: the one with the fewest requests in flight (and queued);
2. a node where it is starting: join that start instead of loading it twice;
3. a node with room for it: free memory first, then memory its idle servers would free by
   eviction; `binpack` picks the fullest node that fits (keeping big nodes free for big
   models), `spread` the emptiest (replicas on different machines);
4. else the up node with the most room, whose own scheduler then queues or refuses the request
   with its usual errors (the node is where memory is really known).
Nodes that are down, not allowed for the profile, or excluded (already tried) never qualify;
for 3 and 4, neither do nodes that have not reported the profile yet (`awaiting`), and nodes
where its last start failed only when no other node may take it.

The gateway's own machine is one more candidate, named `local` (`LOCAL_NODE`): its view comes
from its own server manager instead of a heartbeat, so the rules above treat it like any node.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Strategy = Literal["binpack", "spread"]
ANY_NODE = "*"
# The machine of the gateway answering the request (each replica's own); no node may take the
# name. A profile with `nodes: null` runs only there, as before nodes existed.
LOCAL_NODE = "local"


@dataclass(frozen=True)
class ServerReport:
    """One profile's server on one node, as its heartbeat said (plus this replica's own view)."""

    profile: str
    state: str
    in_flight: int = 0
    queued: int = 0
    memory_bytes: int = 0
    pinned: bool = False
    # The node's own estimate of what the profile needs there (from the model on its disk).
    need_bytes: int = 0

    @property
    def load(self) -> int:
        return self.in_flight + self.queued

    @property
    def evictable_bytes(self) -> int:
        """What the node's scheduler would free by stopping it for another model."""
        idle = self.state == "ready" and self.load == 0 and not self.pinned
        return self.memory_bytes if idle else 0


@dataclass(frozen=True)
class NodeView:
    name: str
    up: bool
    cap_bytes: int = 0
    free_bytes: int = 0
    servers: tuple[ServerReport, ...] = ()

    def server(self, profile: str) -> ServerReport | None:
        for report in self.servers:
            if report.profile == profile:
                return report
        return None

    @property
    def room_bytes(self) -> int:
        return self.free_bytes + sum(s.evictable_bytes for s in self.servers)


def allowed(node: str, allowed_nodes: Sequence[str]) -> bool:
    return ANY_NODE in allowed_nodes or node in allowed_nodes


def runs_here(allowed_nodes: Sequence[str] | None, local_node: bool = True) -> bool:
    """Whether a profile may run on the gateway's own machine: `nodes: null` (only here), or a
    list that names `local` or is `*` while this machine takes part (MLX_MANAGER_LOCAL_NODE)."""
    return allowed_nodes is None or (local_node and allowed(LOCAL_NODE, allowed_nodes))


def place(
    nodes: Sequence[NodeView],
    profile: str,
    allowed_nodes: Sequence[str],
    need_bytes: int,
    strategy: Strategy = "binpack",
    exclude: frozenset[str] = frozenset(),
) -> str | None:
    """The name of the node to send the request to, or None when no node may take it."""
    candidates = [
        n for n in nodes if n.up and n.name not in exclude and allowed(n.name, allowed_nodes)
    ]
    if not candidates:
        return None
    for state in ("ready", "starting"):
        running = [(report, n) for n in candidates if (report := n.server(profile)) is not None]
        here = [(r.load, n.name) for r, n in running if r.state == state]
        if here:
            return min(here)[1]
    # Only a node that has reported the profile (any state) has it in its registry yet; one
    # where its last start failed (a model missing from that node's disk, say) comes last.
    known = [n for n in candidates if n.server(profile) is not None]
    if not known:
        return None
    candidates = [n for n in known if _state(n, profile) != "failed"] or known
    for room in (_free, _room):
        fitting = [n for n in candidates if _need(n, profile, need_bytes) <= room(n)]
        if fitting:
            if strategy == "spread":  # the emptiest
                return min(fitting, key=lambda n: (-room(n), n.name)).name
            return min(fitting, key=lambda n: (room(n), n.name)).name  # the fullest
    return min(candidates, key=lambda n: (-n.room_bytes, n.name)).name


def awaiting(
    nodes: Sequence[NodeView],
    profile: str,
    allowed_nodes: Sequence[str],
    exclude: frozenset[str] = frozenset(),
) -> bool:
    """Whether an up node that may run `profile` has not reported it yet: it will have it
    after its next heartbeat (the answer carries it), so a request may wait for that."""
    return any(
        n.up and n.name not in exclude and allowed(n.name, allowed_nodes)
        for n in nodes
        if n.server(profile) is None
    )


def _state(node: NodeView, profile: str) -> str | None:
    report = node.server(profile)
    return None if report is None else report.state


def _need(node: NodeView, profile: str, need_bytes: int) -> int:
    """The larger of the gateway's figure (`memory_gb`, or its own estimate) and the node's:
    the model may be on the node's disk only, where the gateway cannot size it."""
    report = node.server(profile)
    return max(need_bytes, report.need_bytes if report is not None else 0)


def _free(node: NodeView) -> int:
    return node.free_bytes


def _room(node: NodeView) -> int:
    return node.room_bytes
