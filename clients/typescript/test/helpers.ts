/** What the end-to-end tests share. tests/e2e/test_typescript_client.py starts the backend and passes its addresses. */
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { BillingClient, type ClientOptions, type Status } from "@polar-billing/client";
import { BillingClient as HttpBillingClient } from "@polar-billing/client/http";

export const env = (name: string): string => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: tests/e2e/test_typescript_client.py runs these tests`);
  return value;
};

export type TransportName = "nats" | "http";
export const TRANSPORTS: TransportName[] = ["nats", "http"];

/** NATS through the main entry; HTTP through the edge entry `/http` (or the main one, `entry: "main"`). */
export function connect(transport: TransportName, options: ClientOptions = {}, entry: "main" | "http" = "http")
  : Promise<BillingClient | HttpBillingClient> {
  if (transport === "nats") return BillingClient.connect({ servers: env("NATS_URL"), ...options });
  const http = { url: env("INGRESS_URL"), apiKey: env("API_KEY"), ...options };
  return entry === "main" ? BillingClient.connect(http) : HttpBillingClient.connect(http);
}

export const freshUser = (label: string): string => `ts_${label}_${randomUUID().slice(0, 8)}`;

/** Polls until `done` holds (usage-sync counts usage asynchronously). */
export async function eventually<T>(what: string, get: () => Promise<T>, done: (value: T) => boolean,
                                    timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await get();
    if (done(value)) return value;
    if (Date.now() > deadline) throw new Error(`${what}: still ${JSON.stringify(value)} after ${timeoutMs} ms`);
    await sleep(200);
  }
}

export const messagesUsed = (s: Status): number => s.limits.messages_per_day.used;

/** The next midnight, UTC: when messages_per_day resets. */
export function nextUtcMidnight(): Date {
  const now = new Date();
  return new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() + 1));
}

/** Runs `task` for 0..n-1, at most `width` at once. */
export async function pooled(n: number, width: number, task: (i: number) => Promise<unknown>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < n) await task(next++);
  }));
}

/** A logger that keeps what it is given. */
export function capturingLogger(): { warn: (...args: unknown[]) => void; lines: unknown[][] } {
  const lines: unknown[][] = [];
  return { warn: (...args: unknown[]) => void lines.push(args), lines };
}
