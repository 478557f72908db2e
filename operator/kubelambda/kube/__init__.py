"""The one door to the Kubernetes API: get / list / create / patch / apply / delete / watch, and its errors."""

from kubelambda.kube._client import ApiError, KubeClient, WatchEvent, resource_path

__all__ = ["ApiError", "KubeClient", "WatchEvent", "resource_path"]
