"""Queue and topic destinations without a broker: what is refused before connecting."""

from __future__ import annotations

import pytest

from kubelambda.api.v1alpha1._common import QueueTarget
from kubelambda.destinations import Senders


async def test_a_sender_without_a_secret_reader_refuses_a_credentials_secret() -> None:
    """The async worker builds its Senders without a Secret reader: a credentialsSecret is an error naming it
    (the API server refuses one in a Function's async destination already; this is the second line)."""
    target = QueueTarget.model_validate(
        {"redis": {"url": "redis://127.0.0.1:1/0", "key": "k", "credentialsSecret": "redis-creds"}}
    )
    senders = Senders()
    try:
        with pytest.raises(ValueError, match="credentialsSecret redis-creds: this sender reads no Secrets"):
            await senders.send(target, b"{}", key="k")
    finally:
        await senders.close()
