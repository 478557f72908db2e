# Documentation generated from the code (a unit test fails when a generated page drifts).
.PHONY: docs-reference docs
# docs/reference.md: the Function and Trigger reference, from the pydantic models (tests/unit/test_docs_reference.py).
docs-reference: venv
	$(PY) -m kubelambda.api docs

docs: docs-reference
