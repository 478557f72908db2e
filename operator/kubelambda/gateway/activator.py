"""Scale from zero: the first request to a function with no ready instance asks for one, once.

Concurrent cold requests share a single scale-up (one task per function); each then waits for a ready
endpoint, up to the function timeout plus the cold-start allowance, through the registry's watch.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from kubelambda.gateway.registry import FunctionEntry, Key
from kubelambda.kube import KubeClient, resource_path
from kubelambda.resources.names import deployment_name
from kubelambda.settings import SCALE_FIELD_MANAGER

logger = logging.getLogger(__name__)


def scale_path(namespace: str, deployment: str) -> str:
    return resource_path("apps/v1", "deployments", namespace=namespace, name=deployment, subresource="scale")


async def write_scale(kube: KubeClient, namespace: str, deployment: str, replicas: int) -> None:
    """``spec.replicas`` of a function Deployment, under the autoscaler's field manager."""
    await kube.request(
        "PATCH",
        scale_path(namespace, deployment),
        body={"spec": {"replicas": replicas}},
        params={"fieldManager": SCALE_FIELD_MANAGER},
        content_type="application/merge-patch+json",
    )


@dataclass
class Activator:
    kube: KubeClient
    scale_ups: int = 0  # scale writes made from zero (tests and metrics read it)
    _pending: dict[Key, asyncio.Task[None]] = field(default_factory=dict)

    async def activate(self, fn: FunctionEntry) -> None:
        """Makes sure the function's Deployment asks for at least one instance; one write per cold episode."""
        task = self._pending.get(fn.key)
        if task is None:
            task = asyncio.create_task(self._scale_up(fn))
            self._pending[fn.key] = task
            task.add_done_callback(lambda _: self._pending.pop(fn.key, None))
        await asyncio.shield(task)

    async def _scale_up(self, fn: FunctionEntry) -> None:
        name = deployment_name_of(fn)
        scale = await self.kube.get(scale_path(fn.namespace, name))
        if int(scale.get("spec", {}).get("replicas", 0)) >= 1:
            return  # already asked for (by the autoscaler, another request, or minInstances)
        await write_scale(self.kube, fn.namespace, name, max(1, fn.spec.scaling.min_instances))
        self.scale_ups += 1
        logger.info("Scaled Deployment %s/%s from zero for a waiting request", fn.namespace, name)


def deployment_name_of(fn: FunctionEntry) -> str:
    """The builders' rule for the Deployment's name, applied to what the gateway knows of the Function."""
    return deployment_name(fn.name)
