"""Real deployments on loopback (``flwr-byz deploy``): credentials, processes, federation."""

from .credentials import NodeKeys, TlsFiles, make_node_keys, make_tls
from .federation import LocalDeployment, NodeSpec, free_port, run_config_toml
from .flower_app import write_app
from .processes import ManagedProcess, ProcessSet, descendants, handle_termination

__all__ = [
    "LocalDeployment",
    "ManagedProcess",
    "NodeKeys",
    "NodeSpec",
    "ProcessSet",
    "TlsFiles",
    "descendants",
    "free_port",
    "handle_termination",
    "make_node_keys",
    "make_tls",
    "run_config_toml",
    "write_app",
]
