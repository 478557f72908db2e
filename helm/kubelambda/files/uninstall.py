"""The chart's post-delete hook (templates/uninstall.yaml): deletes what the platform made at run time that the
release does not own, once the release's own objects are gone. Runs in the control-plane image under a
ServiceAccount that may do only this. Settings from the Job's environment:

NAMESPACE       the release namespace: the gateway replicas' member Leases and the leader Lease; the access keys
                (Secrets labelled kubelambda.io/access-key=true) unless KEEP_DATA is "true"
POOL_NAMESPACE  set when the chart did not create the warm-pool namespace (which would go with the release): the
                pool Deployments, their NetworkPolicy and the pool pods the gateway made there
"""

import asyncio
import os
from pathlib import Path

from kubelambda.kube import KubeClient, resource_path

LEADER_LEASE = "kubelambda-gateway-leader"
MEMBER_LABEL = "kubelambda.io/gateway-member"
ACCESS_KEYS = "kubelambda.io/access-key=true"
# Every object the gateway makes in the pool namespace (kubelambda.resources.warmpool): claimed pods included,
# which their ReplicaSet released when they were relabelled.
POOL_OBJECTS = "app.kubernetes.io/managed-by=kubelambda-gateway"
POOL_KINDS = (("apps/v1", "deployments"), ("networking.k8s.io/v1", "networkpolicies"), ("v1", "pods"))


async def delete_collection(kube: KubeClient, api: str, plural: str, namespace: str, selector: str) -> None:
    path = resource_path(api, plural, namespace=namespace)
    options = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
    gone = await kube.request("DELETE", path, body=options, params={"labelSelector": selector})
    for item in gone.get("items") or []:
        print(f"deleted {plural} {namespace}/{item['metadata']['name']}", flush=True)


async def main() -> None:
    # KUBELAMBDA_ROOTFS: the process node of `kubelambda dev up` (no mount namespace).
    sa = Path(os.environ.get("KUBELAMBDA_ROOTFS", "/")) / "var/run/secrets/kubernetes.io/serviceaccount"
    ns = os.environ["NAMESPACE"]
    async with KubeClient.in_cluster(directory=sa) as kube:
        leases = await kube.get(resource_path("coordination.k8s.io/v1", "leases", namespace=ns))
        for lease in leases["items"]:
            meta = lease["metadata"]
            if meta["name"] == LEADER_LEASE or MEMBER_LABEL in (meta.get("labels") or {}):
                name = meta["name"]
                await kube.delete(resource_path("coordination.k8s.io/v1", "leases", namespace=ns, name=name))
                print(f"deleted leases {ns}/{name}", flush=True)
        if os.environ.get("KEEP_DATA") != "true":
            await delete_collection(kube, "v1", "secrets", ns, ACCESS_KEYS)
        pools = os.environ.get("POOL_NAMESPACE")
        if pools:
            for api, plural in POOL_KINDS:
                await delete_collection(kube, api, plural, pools, POOL_OBJECTS)


if __name__ == "__main__":  # python -c runs it as __main__; the unit test reads its names
    asyncio.run(main())
