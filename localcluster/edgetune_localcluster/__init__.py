"""A real Kubernetes control plane on the laptop (see localcluster/README.md).

    from edgetune_localcluster import LocalCluster
    c = LocalCluster("/tmp/mycluster").up()      # builds the binary once, then starts in seconds
    c.kubeconfig                                  # admin kubeconfig (Path)
    c.serviceaccount_kubeconfig("ns", "sa")      # kubeconfig with exactly that ServiceAccount's RBAC
    c.kubectl("get", "nodes")                    # CompletedProcess (text)
    c.pvc_path("ns", "claim")                    # local folder backing a PVC
    c.down()
"""
from .build import ensure_binary
from .cluster import DEFAULT_DATA_DIR, LocalCluster
from .nodes import DEFAULT_NODES, EDGE_TAINT, default_nodes

__all__ = ["LocalCluster", "DEFAULT_DATA_DIR", "DEFAULT_NODES", "EDGE_TAINT", "default_nodes", "ensure_binary"]
