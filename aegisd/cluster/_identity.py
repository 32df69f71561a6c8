"""Who this node is: its id and the URL other nodes reach it at."""

from __future__ import annotations

import hashlib
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from aegisd.core.config import Config, is_loopback
from aegisd.core.errors import ValidationError

NODE_ID_FILE = "node-id"
_VALID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class NodeIdentity:
    id: str
    url: str  # where other nodes reach this one
    host: str  # the machine's host name
    state_dir: str


def _default_id(state: Path) -> str:
    """The host name and a short hash of the state dir, kept in ``<state>/node-id`` once chosen (so that a new
    host name does not make a node a stranger to its own sessions)."""
    path = state / NODE_ID_FILE
    try:
        stored = path.read_text().strip()
    except FileNotFoundError:
        stored = ""
    if _VALID.match(stored):
        return stored
    host = re.sub(r"[^A-Za-z0-9._-]+", "-", socket.gethostname()).strip("-.") or "node"
    digest = hashlib.sha256(str(state).encode()).hexdigest()[:6]
    chosen = f"{host[:48]}-{digest}"
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(chosen + "\n")
    tmp.replace(path)
    return chosen


def advertise_url(config: Config, *, required: bool = False) -> str:
    """``advertiseUrl``, or http(s)://<host>:<port> (https when tlsCert is set). Binding every address needs it
    on a store other nodes may share (PostgreSQL): ``required`` raises then (check_cluster_config, at start)."""
    if config.advertiseUrl:
        return config.advertiseUrl.rstrip("/")
    host = config.host
    if host in ("0.0.0.0", "::", "") and not required:
        return config.base_url
    if host in ("0.0.0.0", "::", ""):
        raise ValidationError(f"binding {host or 'every address'} needs AEGIS_ADVERTISE_URL (advertiseUrl): the URL "
                              "other nodes of the cluster reach this one at")
    scheme = "https" if config.tlsCert else "http"
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{config.port}"


def url_is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host == "localhost" or is_loopback(host)


def check_cluster_config(config: Config) -> None:
    """What a node on a shared store needs before it starts (called from ``Daemon.__init__``); refused with a
    clear message, exit 2. Always: the TLS certificate and key load and go together. On PostgreSQL (other nodes may
    share the store, docs/cluster.md): a URL other nodes can reach it at, and, when that URL or the bind address
    is not loopback, ``clusterSecret``. Other stores have one node: nothing more to check."""
    from aegisd.cluster._tls import check_server_tls

    check_server_tls(config)
    if config.sessionStore != "postgres":
        return
    url = advertise_url(config, required=True)  # refuses 0.0.0.0 / :: without advertiseUrl
    if config.advertiseUrl and urlsplit(url).scheme == "http" and config.tlsCert:
        raise ValidationError(f"advertiseUrl (AEGIS_ADVERTISE_URL) {url} is http://, but this node serves https "
                              "(tlsCert is set): advertise its https:// URL")
    reachable = not url_is_loopback(url) or not is_loopback(config.host)
    if reachable and not config.clusterSecret:
        where = url if not url_is_loopback(url) else f"{config.host}:{config.port}"
        raise ValidationError(f"this node is reachable by other machines ({where}) on a shared PostgreSQL store but "
                              "has no clusterSecret: set AEGIS_CLUSTER_SECRET (or clusterSecret; at least 16 "
                              "characters, e.g. `openssl rand -hex 32`) to the same value on every node, or bind "
                              "and advertise a loopback address")


def node_identity(config: Config) -> NodeIdentity:
    """This node's identity (``nodeId`` / AEGIS_NODE_ID, or the default kept in the state dir)."""
    state = config.state_path
    if config.nodeId:
        if not _VALID.match(config.nodeId):
            raise ValidationError("nodeId (AEGIS_NODE_ID): 1-63 letters, digits, '.', '_' or '-', starting with a "
                                  "letter or digit")
        node_id = config.nodeId
    else:
        node_id = _default_id(state)
    return NodeIdentity(id=node_id, url=advertise_url(config), host=socket.gethostname(), state_dir=str(state))
