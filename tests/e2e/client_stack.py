"""The whole backend as a chat service sees it, for the client tests (Python and TypeScript): the emulator, billing,
usage-sync and ingress as processes on a database of their own, the emulator's webhooks signed to ingress."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dev.embedded import free_port
from polar_emulator.config import PRO_PRODUCT_ID, TEAM_PRODUCT_ID, TOKENS_METER_ID
from tests.e2e.procs import ServiceProcess, start_service
from tests.e2e.stack import SECRET, reset_consumer
from tests.e2e.usage_stack import reset_usage_consumer, usage_env
from tests.support.emulator import start_emulator

API_KEY = "chat-api-key-for-tests-0123456789"
STATUS_PAGE_SECRET = "status-page-secret-for-the-client-tests"


@dataclass
class ClientStack:
    nats_url: str
    database_url: str
    env: dict[str, str]
    log_dir: Path
    emulator: ServiceProcess
    ingress: ServiceProcess
    billing: ServiceProcess
    usage_sync: ServiceProcess
    api_key: str = API_KEY
    status_page_secret: str = STATUS_PAGE_SECRET
    stopped: list[ServiceProcess] = field(default_factory=list)

    @property
    def ingress_url(self) -> str:
        return self.ingress.url

    def stop_billing(self) -> None:
        assert self.billing.stop() == 0

    def start_billing(self) -> None:
        self.billing = start_service("billing", self.env, self.log_dir / "billing-again")
        self.billing.wait_ready()

    def stop(self) -> None:
        for svc in (self.ingress, self.billing, self.usage_sync):
            if svc.proc.poll() is None:
                svc.stop()
        self.emulator.stop_or_kill()


async def start_client_stack(nats_url: str, database_url: str, log_dir: Path) -> ClientStack:
    from shared import topology

    await reset_usage_consumer(nats_url)
    await reset_consumer(nats_url, topology.POLAR_WEBHOOKS.name, topology.BILLING_WEBHOOKS.name)
    for d in ("emulator", "billing", "usage-sync", "ingress", "billing-again"):
        (log_dir / d).mkdir(parents=True, exist_ok=True)
    ingress_port = free_port()
    emulator = start_emulator(log_dir / "emulator", webhook_url=f"http://127.0.0.1:{ingress_port}/webhooks/polar",
                              webhook_secret=SECRET)
    env = usage_env(nats_url, database_url, emulator, POLAR_WEBHOOK_SECRET=SECRET, CHAT_API_KEYS=API_KEY,
                    STATUS_PAGE_SECRET=STATUS_PAGE_SECRET, POLAR_PRO_PRODUCT_ID=PRO_PRODUCT_ID,
                    POLAR_TEAM_PRODUCT_ID=TEAM_PRODUCT_ID, POLAR_TOKENS_METER_ID=TOKENS_METER_ID,
                    PUBLIC_BASE_URL=f"http://127.0.0.1:{ingress_port}")
    ingress = start_service("ingress", env, log_dir / "ingress", port=ingress_port)
    billing = start_service("billing", env, log_dir / "billing")
    usage_sync = start_service("usage-sync", env, log_dir / "usage-sync")
    for svc in (ingress, billing, usage_sync):
        svc.wait_ready()
    return ClientStack(nats_url, database_url, env, log_dir, emulator, ingress, billing, usage_sync)
