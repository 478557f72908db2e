"""Access keys: an access key id and a secret that stand for one ServiceAccount, for SigV4 callers (boto3, the
AWS CLI). Each key is a Secret in the platform's namespace, labelled ``kubelambda.io/access-key=true``; the
gateway keeps them in memory through a watch (a namespaced Role: no cluster-wide Secret permission), so a
deleted key stops working as soon as the watch delivers the deletion (well within 10 s).

``kubelambda access-key create|list|delete`` (cli/accesskeys.py) writes and removes these Secrets.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import secrets
import string
from dataclasses import dataclass, field
from typing import Any

from kubelambda.kube import KubeClient, list_and_watch, resource_path

logger = logging.getLogger(__name__)
JSON = dict[str, Any]

LABEL = "kubelambda.io/access-key"
SERVICE_ACCOUNT_ANNOTATION = "kubelambda.io/service-account"
CREATED_BY_ANNOTATION = "kubelambda.io/created-by"
DESCRIPTION_ANNOTATION = "kubelambda.io/description"
ID_FIELD = "accessKeyId"
SECRET_FIELD = "secretAccessKey"
KEY_ID = re.compile(r"^KLAK[A-Z2-7]{16}$")
_ID_ALPHABET = string.ascii_uppercase + "234567"
_SECRET_ALPHABET = string.ascii_letters + string.digits + "+/"


@dataclass(frozen=True)
class AccessKey:
    access_key_id: str
    secret_access_key: str
    namespace: str  # of the ServiceAccount
    service_account: str
    created_by: str = ""
    description: str = ""
    created: str = ""

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


def new_key(
    namespace: str, service_account: str, *, created_by: str = "", description: str = ""
) -> AccessKey:
    """A fresh key (ids as AWS shapes them: 20 upper-case characters; secrets: 40 characters)."""
    return AccessKey(
        access_key_id="KLAK" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(16)),
        secret_access_key="".join(secrets.choice(_SECRET_ALPHABET) for _ in range(40)),
        namespace=namespace,
        service_account=service_account,
        created_by=created_by,
        description=description,
    )


def secret_name(access_key_id: str) -> str:
    return f"kubelambda-access-key-{access_key_id.lower()}"


def to_secret(key: AccessKey, *, namespace: str) -> JSON:
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret_name(key.access_key_id),
            "namespace": namespace,
            "labels": {LABEL: "true"},
            "annotations": {
                SERVICE_ACCOUNT_ANNOTATION: f"{key.namespace}/{key.service_account}",
                CREATED_BY_ANNOTATION: key.created_by,
                DESCRIPTION_ANNOTATION: key.description,
            },
        },
        "type": "Opaque",
        "data": {ID_FIELD: b64(key.access_key_id), SECRET_FIELD: b64(key.secret_access_key)},
    }


def from_secret(secret: JSON) -> AccessKey | None:
    """The key a Secret holds, or None (logged) when it is not a well-formed access key."""
    meta = secret.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    data = secret.get("data") or {}
    try:
        key_id = base64.b64decode(data[ID_FIELD]).decode()
        key_secret = base64.b64decode(data[SECRET_FIELD]).decode()
        namespace, _, account = annotations[SERVICE_ACCOUNT_ANNOTATION].partition("/")
    except (KeyError, ValueError) as e:
        logger.warning("Secret %s is labelled %s but is not an access key: %r", meta.get("name"), LABEL, e)
        return None
    if not namespace or not account or not key_id or not key_secret:
        logger.warning("Secret %s is labelled %s but misses a field", meta.get("name"), LABEL)
        return None
    return AccessKey(
        access_key_id=key_id,
        secret_access_key=key_secret,
        namespace=namespace,
        service_account=account,
        created_by=annotations.get(CREATED_BY_ANNOTATION, ""),
        description=annotations.get(DESCRIPTION_ANNOTATION, ""),
        created=meta.get("creationTimestamp", ""),
    )


def secrets_path(namespace: str) -> str:
    return resource_path("v1", "secrets", namespace=namespace)


SELECTOR = {"labelSelector": f"{LABEL}=true"}


@dataclass
class AccessKeyStore:
    """Every access key of the platform namespace, by access key id, kept current by a watch."""

    namespace: str
    keys: dict[str, AccessKey] = field(default_factory=dict)
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    _by_secret: dict[str, str] = field(default_factory=dict)  # Secret name -> access key id

    def get(self, access_key_id: str) -> AccessKey | None:
        return self.keys.get(access_key_id)

    async def run(self, kube: KubeClient) -> None:
        await list_and_watch(
            kube, secrets_path(self.namespace), on_list=self._listed, on_event=self._event, params=SELECTOR
        )

    async def _listed(self, items: list[JSON]) -> None:
        self.keys.clear()
        self._by_secret.clear()
        for item in items:
            self._put(item)
        self.synced.set()

    async def _event(self, kind: str, obj: JSON) -> None:
        name = obj["metadata"]["name"]
        old = self._by_secret.pop(name, None)
        if old is not None:
            self.keys.pop(old, None)
        if kind != "DELETED":
            self._put(obj)

    def _put(self, obj: JSON) -> None:
        key = from_secret(obj)
        if key is not None:
            self.keys[key.access_key_id] = key
            self._by_secret[obj["metadata"]["name"]] = key.access_key_id
