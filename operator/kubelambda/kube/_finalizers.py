"""Putting a finalizer on an object or taking it off without losing another party's: a merge patch of the whole
list carrying the resourceVersion read, so a concurrent change is a conflict that reads again."""

from __future__ import annotations

from kubelambda.kube._client import ApiError, KubeClient


async def change_finalizer(
    kube: KubeClient, path: str, finalizer: str, *, hold: bool, uid: str | None = None
) -> bool:
    """Puts ``finalizer`` on the object at ``path`` (``hold``) or takes it off. False when there was nothing to do
    (the object is gone, is another object of the same name than ``uid``, or already is as asked); raises
    RuntimeError when the object kept changing, and when asked to hold an object already being deleted."""
    for _ in range(10):
        found = await kube.get_or_none(path)
        if found is None:
            return False
        meta = found.get("metadata") or {}
        if uid is not None and meta.get("uid") != uid:
            return False
        finalizers: list[str] = list(meta.get("finalizers") or [])
        if (finalizer in finalizers) == hold:
            return False
        if hold and meta.get("deletionTimestamp"):
            raise RuntimeError(f"{path} is being deleted: not putting {finalizer} on it")
        wanted = [*finalizers, finalizer] if hold else [f for f in finalizers if f != finalizer]
        try:
            await kube.patch(
                path, {"metadata": {"finalizers": wanted, "resourceVersion": meta.get("resourceVersion")}}
            )
        except ApiError as e:
            if e.status in (404, 409):
                continue
            raise
        return True
    raise RuntimeError(f"could not change the finalizers of {path}: it kept changing")
