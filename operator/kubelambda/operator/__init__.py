"""The kubelambda operator (kopf): reconciles Functions into Deployments, Services and NetworkPolicies.

``kubelambda operator`` runs it; tests run :func:`run` in-process with their own :class:`Login`.
"""

from kubelambda.kube import Login, default_login
from kubelambda.operator._kopf import build_registry, connection_info, run
from kubelambda.operator._owned import Outcome
from kubelambda.operator._reconcile import FunctionReconciler

__all__ = [
    "FunctionReconciler",
    "Login",
    "Outcome",
    "build_registry",
    "connection_info",
    "default_login",
    "run",
]
