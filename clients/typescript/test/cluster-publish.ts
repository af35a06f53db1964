/** A steady stream of usage events through the built client, for tests/e2e/test_typescript_cluster.py, which kills
 * the NATS node leading USAGE meanwhile. Prints `{"connected": <server name>}`, waits for a line on stdin, then
 * publishes EVENTS distinct events (ids `ev_<RUN_TAG>_<i>`) at RATE a second, sends every 10th one again a second
 * later, and prints one JSON report. No retry here: only the client's own. */
import { once } from "node:events";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";
import { BillingClient, type NatsTransport } from "@polar-billing/client";
import { env } from "./helpers.js";

const count = Number(process.env.EVENTS ?? 3000);
const rate = Number(process.env.RATE ?? 250);
const tag = env("RUN_TAG");
const optional = (name: string) => (process.env[name] ? Number(process.env[name]) : undefined);

const billing = await BillingClient.connect({
  servers: env("NATS_URL"),
  publishTimeoutMs: optional("PUBLISH_TIMEOUT_MS"),
  publishRetryForMs: optional("PUBLISH_RETRY_FOR_MS"),
});
console.log(JSON.stringify({ connected: (billing.transport as NatsTransport).nc.info?.server_name }));
const stdin = createInterface({ input: process.stdin });
await once(stdin, "line");
stdin.close(); // or it keeps the process alive

const occurredAt = new Date();
const usage = (i: number) => ({ eventId: `ev_${tag}_${i}`, userId: `ts_cluster_${i % 20}`, threadId: `t${i % 50}`,
                                model: "gpt-4o", inputTokens: 100 + i, outputTokens: 10, occurredAt });
const report = { sent: 0, republished: 0, stored: 0, duplicates: 0, failed: 0, maxLatencyMs: 0,
                 errors: {} as Record<string, number> };

async function send(i: number): Promise<void> {
  const started = performance.now();
  report.sent++;
  try {
    const { duplicate } = await billing.trackUsage(usage(i));
    if (duplicate) report.duplicates++;
    else report.stored++;
  } catch (err) {
    report.failed++;
    const name = (err as Error).name;
    report.errors[name] = (report.errors[name] ?? 0) + 1;
  }
  report.maxLatencyMs = Math.max(report.maxLatencyMs, Math.round(performance.now() - started));
}

// Each publish starts on its schedule, whether or not the earlier ones are done: a steady offered load.
const inFlight: Promise<void>[] = [];
const start = performance.now();
for (let i = 0; i < count; i++) {
  await sleep(Math.max(0, start + (i * 1000) / rate - performance.now()));
  inFlight.push(send(i));
  if (i >= rate && (i - rate) % 10 === 0) {
    report.republished++;
    inFlight.push(send(i - rate)); // the same event again, one second later
  }
}
await Promise.all(inFlight);
await billing.close();
console.log(JSON.stringify(report));
