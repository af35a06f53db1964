"""Ingress's SQL: the success page reads what billing recorded about a checkout (read only)."""
from __future__ import annotations

import asyncpg


async def checkout_outcome(conn: asyncpg.Connection, checkout_id: str) -> asyncpg.Record | None:
    """The checkout as billing saw it, and the subscription it produced (if any)."""
    return await conn.fetchrow(
        """SELECT c.status AS checkout_status, s.status AS subscription_status, s.plan
           FROM checkouts c
           LEFT JOIN subscriptions s ON s.id = c.subscription_id OR s.checkout_id = c.id
           WHERE c.id = $1
           ORDER BY (s.status IN ('active', 'trialing')) DESC NULLS LAST LIMIT 1""",
        checkout_id,
    )
