"""The one door to the Kubernetes API: get / list / create / patch / apply / delete / watch, and its errors."""

from kubelambda.kube._client import ApiError, KubeClient, WatchEvent, resource_path
from kubelambda.kube._informer import list_and_watch

__all__ = ["ApiError", "KubeClient", "WatchEvent", "list_and_watch", "resource_path"]
