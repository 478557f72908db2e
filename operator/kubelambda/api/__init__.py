"""The kubelambda APIs as pydantic models, and the CRDs generated from them (``python -m kubelambda.api``)."""

from kubelambda.api._crd import CRDS, crd_documents, render_crds

__all__ = ["CRDS", "crd_documents", "render_crds"]
