"""Topic subscriptions (the self-hosted SNS): one module per broker, each naming its class ``BRIDGE``."""
