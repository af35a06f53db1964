"""A Polar of our own: Polar's wire format (2026-10) for the endpoints we use, its failure modes, signed webhooks.

The official polar-sdk talks to it exactly as to Polar (`PolarAsync(token, base_url=...)`). Tests and `make run`
use it; an integrator can use it to replay every failure Polar can produce against their own deployment.
"""
