/** Decisions without billing. The answers to reuse are fetched while billing runs; then this file writes
 * `$OUTAGE_DIR/warm` and waits for tests/e2e/test_typescript_client.py to stop billing and write
 * `$OUTAGE_DIR/billing-stopped`. The driver starts billing again afterwards. */
import assert from "node:assert/strict";
import { access, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { after, before, describe, test } from "node:test";
import { BillingClient, BillingUnavailable, type CheckDecision } from "@polar-billing/client";
import { capturingLogger, connect, env, freshUser, TRANSPORTS, type TransportName } from "./helpers.js";

type Client = Awaited<ReturnType<typeof connect>>;
const open = freshUser("open"); // allowed when billing last answered
const full = freshUser("full"); // refused on messages_per_day when billing last answered
const clients = {} as Record<TransportName, { plain: Client; remembering: Client; logger: ReturnType<typeof capturingLogger> }>;
const lastAnswers: Record<TransportName, Record<string, CheckDecision>> = { nats: {}, http: {} };

before(async () => {
  const setup = await BillingClient.connect({ servers: env("NATS_URL") });
  const held = await Promise.all(Array.from({ length: 100 }, () => setup.reserve({
    userId: full, threadId: "t1", estimatedTokens: 10, ttlSeconds: 600 }))); // 100 messages held: the day is full
  assert.equal(held.filter((r) => r.allowed).length, 100);
  await setup.close();
  for (const transport of TRANSPORTS) {
    const logger = capturingLogger();
    // HTTP through the main entry here (the live tests use `/http`).
    const plain = await connect(transport, { logger }, "main");
    const remembering = await connect(transport, {
      logger, onUnavailable: { fallback: "deny", lastKnownMaxAgeSeconds: 3600 } }, "main");
    for (const user of [open, full]) lastAnswers[transport][user] = await remembering.check({ userId: user });
    assert.equal(lastAnswers[transport][open]!.allowed, true);
    assert.equal(lastAnswers[transport][full]!.reason, "messages_per_day");
    clients[transport] = { plain, remembering, logger };
  }
  await writeFile(join(env("OUTAGE_DIR"), "warm"), "");
  for (const deadline = Date.now() + 60_000; ;) {
    if (await access(join(env("OUTAGE_DIR"), "billing-stopped")).then(() => true, () => false)) break;
    if (Date.now() > deadline) throw new Error("billing was not stopped");
    await sleep(100);
  }
});

after(async () => {
  for (const { plain, remembering } of Object.values(clients)) await Promise.all([plain.close(), remembering.close()]);
});

for (const transport of TRANSPORTS) {
  describe(`billing stopped, over ${transport}`, () => {
    test('"raise" (the default) throws BillingUnavailable', async () => {
      const { plain } = clients[transport];
      await assert.rejects(plain.check({ userId: open }), BillingUnavailable);
      await assert.rejects(plain.reserve({ userId: open, estimatedTokens: 10 }), BillingUnavailable);
      await assert.rejects(plain.status(open), BillingUnavailable);
      assert.equal(plain.degradedDecisions, 0);
    });

    test('"allow" and "deny" decide, saying so in `degraded`, counted and logged', async () => {
      const { plain, logger } = clients[transport];
      const before = { count: plain.degradedDecisions, logged: logger.lines.length };
      const allowed = await plain.check({ userId: open }, { onUnavailable: "allow" });
      assert.deepEqual({ ...allowed, limits: undefined }, {
        allowed: true, plan: "unknown", reason: null, resetsAt: null, limits: undefined, overage: false,
        degraded: { policy: "allow" } });
      assert.deepEqual(allowed.limits.messages_per_day, { used: 0, limit: null, resetsAt: null });
      const denied = await plain.check({ userId: open }, { onUnavailable: "deny" });
      assert.equal(denied.allowed, false);
      assert.equal(denied.reason, "unavailable");
      assert.deepEqual(denied.degraded, { policy: "deny" });
      const reserved = await plain.reserve({ userId: open, estimatedTokens: 10 }, { onUnavailable: "allow" });
      assert.equal(reserved.allowed, true);
      assert.equal(reserved.reservationId, null);
      assert.equal(plain.degradedDecisions, before.count + 3);
      const logged = logger.lines.slice(before.logged);
      assert.equal(logged.length, 3);
      assert.deepEqual(logged[1]![0], "billing.degraded_decision");
      assert.deepEqual({ ...(logged[1]![1] as object), error: "" },
                       { verb: "check", policy: "deny", userId: open, allowed: false, error: "" });
    });

    test("last-known within its max age reuses the user's last answer", async () => {
      const { remembering } = clients[transport];
      for (const user of [open, full]) {
        const decision = await remembering.check({ userId: user });
        const { degraded, ...answer } = decision;
        assert.deepEqual(answer, lastAnswers[transport][user]);
        assert.equal(degraded?.policy, "last_known");
        assert.ok(degraded.ageSeconds! > 0 && degraded.ageSeconds! < 600, `${degraded.ageSeconds}`);
      }
      // A refusal reused, but this limit fails open.
      const failOpen = await remembering.check({ userId: full }, { onUnavailable: {
        fallback: "deny", lastKnownMaxAgeSeconds: 3600, byReason: { messages_per_day: "allow" } } });
      assert.equal(failOpen.allowed, true);
      assert.equal(failOpen.reason, null);
      assert.equal(failOpen.degraded?.policy, "last_known");
      const reserved = await remembering.reserve({ userId: full, estimatedTokens: 10 });
      assert.equal(reserved.allowed, false);
      assert.equal(reserved.reason, "messages_per_day");
      assert.equal(reserved.reservationId, null);
    });

    test("last-known beyond its max age, or never seen, falls back", async () => {
      const { remembering } = clients[transport];
      const stale = await remembering.check({ userId: open }, { onUnavailable: {
        fallback: "deny", lastKnownMaxAgeSeconds: 0.001 } });
      assert.equal(stale.allowed, false);
      assert.equal(stale.reason, "unavailable");
      assert.deepEqual(stale.degraded, { policy: "deny" });
      await assert.rejects(remembering.check({ userId: open }, { onUnavailable: {
        fallback: "raise", lastKnownMaxAgeSeconds: 0.001 } }), BillingUnavailable);
      const unknown = await remembering.check({ userId: freshUser("unseen") });
      assert.deepEqual(unknown.degraded, { policy: "deny" });
    });
  });
}

test("an unreachable ingress is BillingUnavailable too", async () => {
  const client = await BillingClient.connect({ url: "http://127.0.0.1:9", apiKey: "k", logger: capturingLogger() });
  await assert.rejects(client.check({ userId: open }), BillingUnavailable);
  assert.deepEqual((await client.check({ userId: open }, { onUnavailable: "allow" })).degraded, { policy: "allow" });
});
