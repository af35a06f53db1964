"""Ingress's runtime: what its routes are given (through `request.app.state.rt`)."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from polar_billing_client import BillingClient
from standardwebhooks import Webhook

from shared.runtime import Connections, Runtime

from .settings import IngressSettings
from .signatures import signing_keys

BILLING_TIMEOUT = 5.0  # a person is waiting on the page


@dataclass(kw_only=True)
class IngressRuntime(Runtime[IngressSettings]):
    signing_keys: list[Webhook]
    billing: BillingClient  # the pages ask billing as the chat service would


def build(settings: IngressSettings) -> Callable[[Connections], Awaitable[IngressRuntime]]:
    async def runtime(conns: Connections) -> IngressRuntime:
        return IngressRuntime(**conns.fields(), settings=settings,
                              signing_keys=signing_keys(settings.polar_webhook_secret.get_secret_value()),
                              billing=BillingClient(conns.nc, timeout=BILLING_TIMEOUT))
    return runtime
