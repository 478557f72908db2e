"""Pure builders: a typed Function in, Kubernetes objects (dicts) out. No client, no clock.

One module per kind of object, as Knative's ``pkg/reconciler/*/resources``.
"""

from kubelambda.resources.configmap import CodeTooLarge, code_sha256, make_code_configmap
from kubelambda.resources.deployment import (
    cpu_limit_millicores,
    make_agent_secret,
    make_deployment,
)
from kubelambda.resources.labels import FUNCTION_LABEL, labels, selector
from kubelambda.resources.names import FunctionObject
from kubelambda.resources.networkpolicy import make_egress_policy, make_ingress_policy
from kubelambda.resources.rbac import make_scale_role, make_scale_role_binding
from kubelambda.resources.service import make_service
from kubelambda.resources.status import Problem, function_status, status_changes

__all__ = [
    "FUNCTION_LABEL",
    "CodeTooLarge",
    "FunctionObject",
    "Problem",
    "code_sha256",
    "cpu_limit_millicores",
    "function_status",
    "labels",
    "make_agent_secret",
    "make_code_configmap",
    "make_deployment",
    "make_egress_policy",
    "make_ingress_policy",
    "make_scale_role",
    "make_scale_role_binding",
    "make_service",
    "selector",
    "status_changes",
]
