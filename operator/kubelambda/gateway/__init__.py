"""The gateway: the Lambda Invoke API in front of function pods (routing, activator, throttler, autoscaler)."""
