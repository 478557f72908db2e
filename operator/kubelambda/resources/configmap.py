"""The ConfigMap holding inline code, and the code's checksum."""

from __future__ import annotations

import hashlib
import json

from kubelambda.api.v1alpha1 import Code
from kubelambda.jsonobj import JSON
from kubelambda.resources.labels import labels
from kubelambda.resources.names import FunctionObject, code_configmap_name

CONFIGMAP_LIMIT_BYTES = 1024 * 1024
"""The API server refuses a ConfigMap whose data is larger than 1 MiB."""


class CodeTooLarge(ValueError):
    """Inline code that cannot be stored in a ConfigMap."""


def inline_size(fn: FunctionObject) -> int:
    """Bytes the API server counts for the ConfigMap's data: keys plus UTF-8 values."""
    files = fn.spec.code.inline or {}
    return sum(len(k.encode()) + len(v.encode()) for k, v in files.items())


def code_sha256(code: Code) -> str:
    """A checksum of the code as deployed: inline files (sorted), the archive's sha256, the S3 object or image."""
    if code.archive is not None:
        return code.archive.sha256
    if code.s3 is not None and code.s3.sha256:
        return code.s3.sha256
    if code.inline is not None:
        material = json.dumps(code.inline, sort_keys=True, separators=(",", ":"))
    elif code.s3 is not None:
        material = f"s3:{code.s3.endpoint}/{code.s3.bucket}/{code.s3.key}"
    else:
        material = f"image:{code.image}"
    return hashlib.sha256(material.encode()).hexdigest()


def make_code_configmap(fn: FunctionObject) -> JSON | None:
    """The inline code as a ConfigMap (None for other code sources); raises CodeTooLarge over 1 MiB."""
    files = fn.spec.code.inline
    if files is None:
        return None
    size = inline_size(fn)
    if size > CONFIGMAP_LIMIT_BYTES:
        raise CodeTooLarge(
            f"inline code is {size} bytes; a ConfigMap holds at most {CONFIGMAP_LIMIT_BYTES} "
            "(use code.archive, code.s3 or code.image)"
        )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": code_configmap_name(fn.name),
            "namespace": fn.namespace,
            "labels": labels(fn),
            "ownerReferences": [fn.owner_reference()],
        },
        "data": dict(sorted(files.items())),
    }
