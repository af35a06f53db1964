"""The chat service's side of the billing backend: report usage, ask for limits, status and links over NATS.

    from polar_billing_client import BillingClient, new_event_id, LimitExceeded
"""
from .client import BillingClient, BillingError, BillingUnavailable, LimitExceeded, Unavailable, new_event_id

__all__ = ["BillingClient", "BillingError", "BillingUnavailable", "LimitExceeded", "Unavailable", "new_event_id"]
