"""Manifests the suites build again and again."""

from __future__ import annotations

from typing import Any

JSON = dict[str, Any]


def pod(
    name: str,
    command: list[str],
    *,
    restart: str = "Never",
    image: str = "busybox:1.36",
    grace: int = 5,
    **extra: Any,
) -> JSON:
    """A Pod of one container ``main``; ``container=`` adds fields to the container, other ``extra`` to the spec."""
    container: JSON = {"name": "main", "image": image, "command": command}
    container.update(extra.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": grace,
            "containers": [container],
            **extra,
        },
    }
