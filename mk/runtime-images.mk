# Generated from operator/kubelambda/runtimes/table.py by `make runtimes-generate`; do not edit.
# The runtime images (repository:tag below IMAGE_REGISTRY) of every runtime, for `kind load` (mk/chart.mk).
RUNTIME_IMAGES := runtime-python:3.11 runtime-python:3.12 runtime-python:3.13 runtime-nodejs:20 runtime-nodejs:22 runtime-java:17 runtime-java:21 runtime-ruby:3.3 runtime-provided:latest runtime-provided:go
