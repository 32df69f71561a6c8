"""Several aegisd nodes on one PostgreSQL store act as one cluster (docs/cluster.md): every node serves every
session (forwarding an operation to the node that runs it), events are one ordered stream, each node holds a
lease and each session an owner with a fencing epoch, and a lost node's sessions are adopted elsewhere.

This package is what the operations and surfaces see of the cluster: :class:`Cluster` (the nodes, placement,
draining, forwarding). A daemon on any other store is a cluster of one node, so ``ag nodes`` and ``GET /v1/nodes``
work everywhere."""

from __future__ import annotations

from aegisd.cluster._identity import NodeIdentity, check_cluster_config, node_identity
from aegisd.cluster._node import Cluster, NodeInfo

__all__ = ["Cluster", "NodeIdentity", "NodeInfo", "check_cluster_config", "node_identity"]
