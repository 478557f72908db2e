"""The local development cluster: a real Kubernetes control plane plus a node that runs pods as processes.

Public surface:
- :class:`ControlPlane` starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler on loopback.
- :class:`LocalNode` registers a Node and runs the pods bound to it as local processes.
- :func:`serve` (``kubelambda dev serve``) runs both until it is told to stop; ``kubelambda dev up`` starts it
  in the background.
"""

from kubelambda.devcluster._controlplane import ControlPlane
from kubelambda.devcluster._node import LocalNode
from kubelambda.devcluster._supervisor import DevState, serve

__all__ = ["ControlPlane", "DevState", "LocalNode", "serve"]
