/** The chat service's scenario against the running backend, over NATS and over HTTP. */
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import {
  BillingClient, BillingError, LimitExceeded, subjectToken, type BillingEvent, type CheckDecision,
} from "@polar-billing/client";
import {
  connect, env, eventually, freshUser, messagesUsed, nextUtcMidnight, pooled, TRANSPORTS,
} from "./helpers.js";

type Client = Awaited<ReturnType<typeof connect>>;
const expected = JSON.parse(env("EXPECTED")) as {
  now: number; // unix seconds the status page links are signed at
  users: { id: string; subjectToken: string; statusPageUrl: string }[];
};
const TOKENS_PER_MESSAGE = 10 + 5;
const MODEL = "claude-3-5-haiku-latest"; // one of Free's models

for (const transport of TRANSPORTS) {
  describe(`over ${transport}`, () => {
    let client: Client;
    before(async () => {
      client = await connect(transport, {
        publicBaseUrl: env("INGRESS_URL"), statusPageSecret: env("STATUS_PAGE_SECRET"),
        now: () => expected.now * 1000,
      });
    });
    after(() => client.close());

    test("a Free user's 100th message of the day is allowed once, then messages_per_day refuses", async () => {
      const user = freshUser(transport);
      const events: BillingEvent[] = [];
      let listening: Promise<void> | undefined;
      let listener: BillingClient | undefined;
      if (transport === "nats") { // billing's events, through a durable of this test's own
        listener = await BillingClient.connect({ servers: env("NATS_URL") });
        listening = (async () => {
          for await (const event of listener!.events({ durable: `ts-e2e-${user}` })) {
            if (event.userId === user) events.push(event);
          }
        })();
      }

      try {
        await pooled(99, 10, () => client.trackUsage({
          userId: user, threadId: "t1", model: MODEL, inputTokens: 10, outputTokens: 5,
        }));
        const seen = await eventually("status after 99 messages", () => client.status(user),
                                      (s) => messagesUsed(s) === 99);
        assert.equal(seen.plan, "free");
        assert.equal(seen.limits.tokens_per_month.used, 99 * TOKENS_PER_MESSAGE);
        assert.deepEqual(seen.credits, { granted: 0, used: 0, balance: 0 });

        const hundredth = await client.check({ userId: user, model: MODEL, threadId: "t1" });
        assert.equal(hundredth.allowed, true);
        assert.equal(hundredth.reason, null);
        assert.equal(hundredth.degraded, undefined);
        assert.deepEqual(hundredth.limits.messages_per_day, { used: 99, limit: 100, resetsAt: nextUtcMidnight() });

        const reserved = await Promise.all(Array.from({ length: 20 }, () => client.reserve({
          userId: user, threadId: "t1", estimatedTokens: 50, ttlSeconds: 120,
        })));
        const admitted = reserved.filter((r) => r.allowed);
        assert.equal(admitted.length, 1);
        assert.match(admitted[0]!.reservationId ?? "", /^rsv_/);
        for (const r of reserved.filter((r) => !r.allowed)) {
          assert.equal(r.reason, "messages_per_day");
          assert.equal(r.reservationId, null);
        }

        const refused = await client.check({ userId: user, threadId: "t1" });
        assert.equal(refused.allowed, false);
        assert.equal(refused.reason, "messages_per_day");
        assert.deepEqual(refused.resetsAt, nextUtcMidnight());
        await assert.rejects(client.require({ userId: user }), (err: unknown) => {
          assert.ok(err instanceof LimitExceeded);
          assert.equal(err.limit, "messages_per_day");
          assert.deepEqual(err.resetsAt, nextUtcMidnight());
          assert.equal(err.decision.allowed, false);
          return true;
        });

        // The reservation held the 100th message and its 50 tokens; released, the user is back at 99.
        const withReservation = await client.status(user);
        assert.equal(withReservation.limits.tokens_per_month.used, 99 * TOKENS_PER_MESSAGE + 50);
        assert.equal(await client.release(admitted[0]!.reservationId!), true);
        assert.equal(await client.release(admitted[0]!.reservationId!), false);
        const released = await client.status(user);
        assert.equal(released.limits.tokens_per_month.used, 99 * TOKENS_PER_MESSAGE);
        assert.equal(messagesUsed(released), 99);
        assert.equal((await client.check({ userId: user })).allowed, true);

        if (listener) { // 80 % of messages_per_day was crossed once: one event, acked
          await eventually("the usage threshold event", async () => events.length, (n) => n > 0, 15_000);
          await new Promise((resolve) => setTimeout(resolve, 1500)); // a second one would come now
          await listener.close(); // and the loop ends
          await listening;
          assert.equal(events.length, 1, JSON.stringify(events));
          const threshold = events[0]!;
          assert.ok(threshold.type === "usage.threshold");
          assert.deepEqual({ ...threshold, used: 0 }, {
            type: "usage.threshold", userId: user, limit: "messages_per_day", percent: 80, used: 0, limitValue: 100,
            resetsAt: nextUtcMidnight(),
          });
          assert.ok(threshold.used >= 80 && threshold.used < 100);
        }
      } finally {
        await listener?.close();
      }
    });

    test("user ids with dots, plus, slashes, spaces and accents go through trackUsage → status", async () => {
      for (const { id, subjectToken: token } of expected.users) {
        assert.equal(subjectToken(id), token); // the same token as the Python client's
        const before = messagesUsed(await client.status(id));
        const eventId = client.newEventId();
        const usage = { eventId, userId: id, threadId: "t-any", model: MODEL, inputTokens: 3, outputTokens: 4 };
        assert.deepEqual(await client.trackUsage(usage), { eventId, duplicate: false });
        assert.deepEqual(await client.trackUsage(usage), { eventId, duplicate: true }); // a retry: stored once
        const after = await eventually(`status of ${id}`, () => client.status(id), (s) => messagesUsed(s) > before);
        assert.equal(messagesUsed(after), before + 1);
      }
    });

    test("statusPageUrl is the Python client's link, and ingress serves the page", async () => {
      for (const { id, statusPageUrl } of expected.users) {
        const url = await client.statusPageUrl(id);
        assert.equal(url, statusPageUrl);
        const page = await fetch(url);
        assert.equal(page.status, 200);
        assert.match(await page.text(), /<html/i);
      }
    });

    test("billing's errors arrive as BillingError, with their code and field", async () => {
      await assert.rejects(client.check({ userId: "" }), (err: unknown) => {
        assert.ok(err instanceof BillingError);
        assert.equal(err.code, "invalid_request");
        assert.equal(err.field, "user_id");
        return true;
      });
      await assert.rejects(client.portalUrl({ userId: freshUser("portal") }),
                           (err: unknown) => err instanceof BillingError && err.code === "no_customer");
      await assert.rejects(client.trackUsage({ userId: "u", threadId: "t", model: "m", inputTokens: -1,
                                               outputTokens: 0 }),
                           (err: unknown) => err instanceof BillingError && err.field === "input_tokens");
    });

    test("usage() reports the tracked events by model, with their tokens and cost", async () => {
      const userId = freshUser("usage");
      for (const model of ["gpt-4o", "gpt-4o", "my-own-finetune"]) {
        await client.trackUsage({ userId, threadId: "t-usage", model, inputTokens: 1000, outputTokens: 500 });
      }
      const report = await eventually("usage report", () => client.usage({ userId, groupBy: ["model"] }),
                                      (r) => r.totals.events === 3);
      assert.match(report.from, /^\d{4}-\d{2}-\d{2}$/);
      const byModel = Object.fromEntries(report.rows.map((r) => [r.model, r]));
      assert.equal(byModel["gpt-4o"].events, 2);
      assert.equal(byModel["gpt-4o"].billableTokens, 3000);
      assert.equal(byModel["gpt-4o"].costUsd, 0.015); // 2 x (1000 x $2.50 + 500 x $10) per million
      assert.equal(byModel["my-own-finetune"].costUsd, null); // no list price: never 0, counted
      assert.equal(report.totals.unpricedEvents, 1);
      await assert.rejects(client.usage({ userId, from: "2026-03-01", to: "2026-02-01" }),
                           (err: unknown) => err instanceof BillingError && err.field === "from");
    });

    test("checkoutUrl answers a Polar checkout link", async () => {
      const link = await client.checkoutUrl({ userId: freshUser("checkout"), plan: "pro",
                                              successUrl: "https://chat.example/success" });
      assert.match(link.url, /^https?:\/\//);
      assert.ok(link.checkoutId);
      assert.ok(link.expiresAt instanceof Date && link.expiresAt.getTime() > Date.now());
    });
  });
}

test("events() over HTTP says it needs NATS", async () => {
  const client = await connect("http");
  assert.throws(() => client.events({ durable: "x" }), /needs the NATS transport/);
  await client.close();
});

test("a decision's types: resetsAt is a Date and limits are keyed by wire name", async () => {
  const client = await connect("nats");
  const d: CheckDecision = await client.check({ userId: freshUser("types") });
  assert.deepEqual(Object.keys(d.limits).sort(), ["messages_per_day", "threads_per_month", "tokens_per_month"]);
  assert.ok(d.limits.tokens_per_month.resetsAt instanceof Date);
  await client.close();
});

/** Every module a module imports, transitively: relative ones followed, bare ones (packages, node:*) collected. */
async function importGraph(entry: string): Promise<{ files: string[]; bare: Set<string>; code: string }> {
  const files: string[] = [];
  let all = "";
  const bare = new Set<string>();
  const todo = [new URL(entry)];
  while (todo.length) {
    const url = todo.pop()!;
    if (files.includes(url.href)) continue;
    files.push(url.href);
    const code = await readFile(fileURLToPath(url), "utf8");
    all += code;
    for (const m of code.matchAll(/(?:import|export)\s[^;]*?from\s*["']([^"']+)["']|import\(\s*["']([^"']+)["']|import\s*["']([^"']+)["']/g)) {
      const spec = (m[1] ?? m[2] ?? m[3])!;
      if (spec.startsWith(".")) todo.push(new URL(spec, url));
      else bare.add(spec);
    }
  }
  return { files, bare, code: all };
}

test("the ./http entry imports no Node API and no NATS package (it bundles for edge runtimes)", async () => {
  const http = await importGraph(import.meta.resolve("@polar-billing/client/http"));
  assert.ok(http.files.some((f) => f.endsWith("/http-transport.js")) && http.files.some((f) => f.endsWith("/links.js")));
  assert.deepEqual([...http.bare], []);
  assert.doesNotMatch(http.code, /\b(?:process|Buffer|global)\b\s*[.(]/); // nor Node's globals (ESM: no require)
  const main = await importGraph(import.meta.resolve("@polar-billing/client"));
  assert.deepEqual([...main.bare].sort(), ["@nats-io/jetstream", "@nats-io/transport-node"]); // the walk sees imports
});
