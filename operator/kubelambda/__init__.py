"""kubelambda: a self-hosted, AWS-Lambda-compatible Functions-as-a-Service platform for Kubernetes."""

__version__ = "0.1.0"
