"""Test support shared by kubelambda's suites: the local cluster, namespaces, and waiting with deadlines."""

from kltest.cluster import Cluster, create_namespace, kubectl_bin, start_cluster
from kltest.wait import wait_for
from kubelambda.devcluster._process import alive

__all__ = ["Cluster", "alive", "create_namespace", "kubectl_bin", "start_cluster", "wait_for"]
