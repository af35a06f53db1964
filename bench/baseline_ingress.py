"""The raw baseline for bench/ingress.py: the least a webhook receiver can do with the same guarantees.

A bare Starlette route that verifies with `standardwebhooks` and publishes with nats-py, awaiting the PubAck.
Run: python -m bench.baseline_ingress <port>   (NATS_URL and POLAR_WEBHOOK_SECRET from the environment)
"""
from __future__ import annotations

import json
import os
import sys
from contextlib import asynccontextmanager

import nats
import uvicorn
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared import topology

KEY = Webhook(os.environ["POLAR_WEBHOOK_SECRET"])
STATE: dict = {}


async def receive(request: Request) -> Response:
    body = await request.body()
    try:
        KEY.verify(body, dict(request.headers), json_parse=False)
    except Exception:  # noqa: BLE001
        return Response(status_code=403)
    event_type = json.loads(body)["type"]
    await STATE["js"].publish(f"polar.webhook.{event_type}", body,
                              headers={"Nats-Msg-Id": request.headers["webhook-id"]}, timeout=4)
    return Response(status_code=202)


@asynccontextmanager
async def lifespan(app: Starlette):
    nc = await nats.connect(topology.servers(os.environ["NATS_URL"]))
    STATE["js"] = nc.jetstream()
    yield
    await nc.close()


app = Starlette(routes=[Route("/webhooks/polar", receive, methods=["POST"])], lifespan=lifespan)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
