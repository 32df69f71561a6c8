"""Node operations: the nodes of the cluster (one, this daemon, unless the store is PostgreSQL), and draining one
(it takes no new sessions; those it runs go on)."""

from __future__ import annotations

import msgspec

from aegisd.cluster import Cluster, NodeInfo
from aegisd.core.errors import NotFound
from aegisd.ops._registry import OpContext, op
from aegisd.ops._types import Empty


class NodeId(msgspec.Struct, forbid_unknown_fields=True):
    id: str


def cluster_of(ctx: OpContext) -> Cluster:
    cluster = ctx.services.cluster
    assert cluster is not None, "the daemon sets Services.cluster as it starts"
    return cluster


def unknown(node_id: str) -> NotFound:
    return NotFound(f"node {node_id} not found (`ag nodes` lists them)")


@op("nodes.list", Empty, result=list[NodeInfo],
    summary="The nodes of the cluster, with their status and load (one node: this daemon, unless the store is "
            "PostgreSQL)")
async def list_nodes(ctx: OpContext, p: Empty) -> list[NodeInfo]:
    return await cluster_of(ctx).nodes()


@op("nodes.get", NodeId, result=NodeInfo, summary="One node of the cluster")
async def get(ctx: OpContext, p: NodeId) -> NodeInfo:
    for node in await cluster_of(ctx).nodes():
        if node.id == p.id:
            return node
    raise unknown(p.id)


async def _drain(ctx: OpContext, node_id: str, draining: bool) -> NodeInfo:
    cluster = cluster_of(ctx)
    if node_id not in {n.id for n in await cluster.nodes()}:
        raise unknown(node_id)
    info = await cluster.drain(node_id, draining)
    ctx.audit("node.drain" if draining else "node.undrain", detail={"nodeId": node_id})
    return info


@op("nodes.drain", NodeId, result=NodeInfo, permission="admin",
    summary="Drain a node: it takes no new sessions (those it runs go on) until undrained")
async def drain(ctx: OpContext, p: NodeId) -> NodeInfo:
    return await _drain(ctx, p.id, True)


@op("nodes.undrain", NodeId, result=NodeInfo, permission="admin",
    summary="Undrain a node: it takes new sessions again")
async def undrain(ctx: OpContext, p: NodeId) -> NodeInfo:
    return await _drain(ctx, p.id, False)
