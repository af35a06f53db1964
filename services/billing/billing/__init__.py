"""Billing: Polar webhooks → PostgreSQL state; the chat service's request/reply API (limits, status, links)."""
