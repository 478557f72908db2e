"""The one door to the Kubernetes API: get / list / create / patch / apply / delete / watch, its errors, and the
credentials (:class:`Login`) a client is made from."""

from kubelambda.kube._client import ApiError, KubeClient, WatchEvent, resource_path
from kubelambda.kube._finalizers import change_finalizer
from kubelambda.kube._informer import list_and_watch
from kubelambda.kube._login import Login, default_login

__all__ = [
    "ApiError",
    "KubeClient",
    "Login",
    "WatchEvent",
    "change_finalizer",
    "default_login",
    "list_and_watch",
    "resource_path",
]
