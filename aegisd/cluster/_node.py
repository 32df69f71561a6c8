"""The cluster as operations see it. :class:`Cluster` is a cluster of one node (every store but PostgreSQL); the
PostgreSQL cluster (aegisd/cluster/_pg.py) extends it with the other nodes, placement and forwarding."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
import trio

from aegisd import __version__
from aegisd.core.errors import NotFound
from aegisd.core.models import now_ms

if TYPE_CHECKING:
    from aegisd.cluster._identity import NodeIdentity
    from aegisd.core.config import Config
    from aegisd.core.models import SessionRecord
    from aegisd.sessions import SessionManager


class NodeInfo(msgspec.Struct):
    """One node, as `GET /v1/nodes` and `ag nodes` show it."""

    id: str
    url: str
    status: str  # up | draining | down
    sessions: int  # live sessions it runs
    capacity: int  # its maxSessions
    version: str
    lastHeartbeat: int  # ms since the epoch (the store's clock)
    startedAt: int
    host: str
    workDirs: list[str]  # its allowedWorkDirs (empty: any directory)
    local: bool  # the node that answered


class Cluster:
    """A cluster of one: this daemon. ``nodes()`` lists it, ``drain()`` stops placing sessions on it."""

    def __init__(self, config: Config, identity: NodeIdentity, manager: SessionManager) -> None:
        self.config = config
        self.identity = identity
        self.manager = manager
        self.draining = False
        self.started_at = now_ms()
        self.url = identity.url

    @property
    def node_id(self) -> str:
        return self.identity.id

    @property
    def multi_node(self) -> bool:
        """More than one node can serve this store (the PostgreSQL cluster)."""
        return False

    def local_sessions(self) -> int:
        return self.manager.live_here()

    def self_info(self) -> NodeInfo:
        return NodeInfo(id=self.node_id, url=self.url, status="draining" if self.draining else "up",
                        sessions=self.local_sessions(), capacity=self.config.maxSessions, version=__version__,
                        lastHeartbeat=now_ms(), startedAt=self.started_at, host=self.identity.host,
                        workDirs=self.manager.workdirs.roots, local=True)

    async def start(self) -> None:
        """Once the store is open (a cluster of one: nothing to do)."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    def set_url(self, url: str) -> None:
        self.url = url

    async def publish_url(self) -> None:
        return None

    async def nodes(self) -> list[NodeInfo]:
        return [self.self_info()]

    async def drain(self, node_id: str, draining: bool = True) -> NodeInfo:
        if node_id != self.node_id:
            raise NotFound(f"node {node_id} not found (`ag nodes` lists them)")
        self.draining = draining
        return self.self_info()

    # ---- what operations ask -------------------------------------------------------------------
    def owner_url(self, rec: SessionRecord) -> str | None:
        """The URL of the node an operation on this session must run on, or None: here."""
        return None

    async def place(self, work_dir: str, node: str | None) -> str | None:
        """The node a new session goes to: None for this one, else that node's URL. Raises when ``node`` is
        not this one (a cluster of one) or when this node is draining."""
        if node not in (None, self.node_id):
            raise NotFound(f"node {node} not found (`ag nodes` lists them)")
        if self.draining:
            from aegisd.core.errors import Unavailable

            raise Unavailable(f"node {self.node_id} is draining: it takes no new sessions (`ag nodes undrain "
                              f"{self.node_id}`)")
        return None

    async def forward(self, url: str, op: str, params: Any, principal: Any, request_id: str) -> Any:
        raise NotImplementedError  # a cluster of one never forwards

    def node_of_url(self, url: str) -> str:
        return self.node_id

    def check_secret(self, presented: str | None) -> bool:
        return False  # a cluster of one takes no node-to-node calls

    def changed(self, session_id: str) -> None:
        """Another node changed this session: read it again soon (a cluster of one: nothing to do)."""

    async def refresh(self, session_id: str) -> SessionRecord | None:
        return self.manager.records.get(session_id)

    async def lookup(self, ident: str) -> None:
        return None
