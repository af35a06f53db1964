import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager, JetStreamApiCodes, JetStreamApiError,
         type JetStreamClient, type ConsumerMessages } from "@nats-io/jetstream";
import { connect, errors, headers, nanos, type NatsConnection } from "@nats-io/transport-node";
import { BillingError, BillingUnavailable } from "./errors.js";
import { BILLING_EVENT_PREFIX, BILLING_EVENTS_STREAM, rpcSubject, SUBSCRIPTION_CHANGED, USAGE_STREAM,
         USAGE_THRESHOLD, usageSubject } from "./subjects.js";
import type { Transport, Verb } from "./transport.js";
import { type BillingEvent, errorBody, subscriptionChanged, usageThreshold } from "./types.js";
import type * as wire from "./wire.js";

export interface NatsOptions {
  /** One URL, several comma-separated, or a list. */
  servers: string | string[];
  /** The connection's name, as the NATS server shows it. */
  name?: string;
}

/** Failures that mean nobody answered: billing is not running, the connection is down, or it was too slow. */
const UNAVAILABLE = [errors.RequestError, errors.TimeoutError, errors.NoRespondersError,
                     errors.ClosedConnectionError, errors.DrainingConnectionError, errors.ConnectionError];

function unavailable(what: string, err: unknown): unknown {
  return UNAVAILABLE.some((cls) => err instanceof cls)
    ? new BillingUnavailable(`${what}: ${(err as Error).message}`, { cause: err })
    : err;
}

/** A clustered stream answers 409 "duplicate message id is in process" while an earlier attempt with the same id is
 * still being replicated: asked again a moment later it answers that attempt's PubAck (duplicate). */
const DUPLICATE_IN_PROCESS = 10158;

/** What a JetStream publish meets while the stream has no leader (an election after a node is lost takes ~5-10 s)
 * or while the connection moves to another server (docs/nats.md §13): no answer in time, no responders (js.publish
 * reports those as JetStreamNotEnabled, caused by them), JetStream's 503, and the 409 above: the Python client's
 * PUBLISH_RETRYABLE (nats.js holds requests while it reconnects, so a reconnect shows as a timeout). Not in it: a
 * closed or draining connection (it never comes back) and 503 "JetStream not enabled for account" (configuration). */
function transient(err: unknown): boolean {
  for (let e: unknown = err; e instanceof Error; e = e.cause) {
    if (e instanceof errors.TimeoutError || e instanceof errors.NoRespondersError) return true;
    if (e instanceof JetStreamApiError) {
      return (e.status === 503 && e.code !== JetStreamApiCodes.JetStreamNotEnabledForAccount)
        || e.code === DUPLICATE_IN_PROCESS;
    }
  }
  return false;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Core NATS request/reply on billing.rpc.<verb>, JetStream for usage events and billing's events. */
export class NatsTransport implements Transport {
  private readonly js: JetStreamClient;
  private readonly consuming = new Set<ConsumerMessages>();

  constructor(readonly nc: NatsConnection) {
    this.js = jetstream(nc);
  }

  static async connect(options: NatsOptions): Promise<NatsTransport> {
    const servers = typeof options.servers === "string"
      ? options.servers.split(",").map((s) => s.trim()).filter(Boolean)
      : options.servers;
    // Reconnects forever, to whichever server of the list (or of the cluster, learnt from it) answers.
    return new NatsTransport(await connect({ servers, name: options.name ?? "billing-client",
                                             maxReconnectAttempts: -1, reconnectTimeWait: 1000 }));
  }

  async request(verb: Verb, body: object, timeoutMs: number): Promise<unknown> {
    let reply: unknown;
    try {
      reply = (await this.nc.request(rpcSubject(verb), JSON.stringify(body), { timeout: timeoutMs })).json();
    } catch (err) {
      throw unavailable(rpcSubject(verb), err);
    }
    const error = (reply as Partial<wire.ErrorReply>).error;
    if (error) throw new BillingError(errorBody(error));
    return reply;
  }

  /** Publishes until JetStream stored the event or `retryForMs` passed, each attempt waiting up to `timeoutMs` for
   * the PubAck. Every attempt carries the same Nats-Msg-Id: one whose PubAck was lost comes back as a duplicate, never
   * stored twice. Errors that are not transient are thrown at once. (js.publish's own `retries` only counts attempts
   * and only retries timeouts and no responders, so the loop is here.) */
  async publishUsage(event: wire.UsageEvent, timeoutMs: number, retryForMs = timeoutMs)
    : Promise<{ duplicate: boolean }> {
    const subject = usageSubject(event.user_id);
    const body = JSON.stringify(event);
    const h = headers(); // js.publish sets Nats-Msg-Id in it: the same on every attempt
    h.set("content-type", "application/json");
    const deadline = Date.now() + retryForMs;
    for (let attempt = 0; ; attempt++) {
      try {
        const ack = await this.js.publish(subject, body, {
          msgID: event.event_id, headers: h, expect: { streamName: USAGE_STREAM },
          timeout: Math.max(50, Math.min(timeoutMs, deadline - Date.now())),
        });
        return { duplicate: ack.duplicate };
      } catch (err) {
        if (!transient(err)) throw unavailable(`publish ${subject}`, err);
        const pause = Math.min(100 * 2 ** attempt, 1000);
        if (Date.now() + pause >= deadline) {
          let why = err as Error; // the root cause: js.publish calls no responders "jetstream is not enabled"
          while (why.cause instanceof Error) why = why.cause;
          throw new BillingUnavailable(`publish ${subject}: not stored within ${retryForMs} ms: ${why.message}`,
                                       { cause: err });
        }
        await sleep(pause);
      }
    }
  }

  async *events(durable: string, fromStart: boolean): AsyncGenerator<BillingEvent> {
    const jsm = await jetstreamManager(this.nc);
    try {
      await jsm.consumers.info(BILLING_EVENTS_STREAM, durable);
    } catch (err) {
      if (!(err instanceof JetStreamApiError && err.status === 404)) throw err;
      await jsm.consumers.add(BILLING_EVENTS_STREAM, {
        name: durable, durable_name: durable, filter_subject: `${BILLING_EVENT_PREFIX}.>`,
        ack_policy: AckPolicy.Explicit, ack_wait: nanos(30_000), max_deliver: -1,
        deliver_policy: fromStart ? DeliverPolicy.All : DeliverPolicy.New,
      });
    }
    const messages = await (await this.js.consumers.get(BILLING_EVENTS_STREAM, durable)).consume({ max_messages: 50 });
    this.consuming.add(messages);
    try {
      for await (const m of messages) {
        let event: BillingEvent | undefined;
        try {
          if (m.subject === SUBSCRIPTION_CHANGED) event = subscriptionChanged(m.json());
          else if (m.subject === USAGE_THRESHOLD) event = usageThreshold(m.json());
        } catch {
          console.warn("billing.event_unreadable", { subject: m.subject });
        }
        if (event) yield event; // resumed when the consumer's loop body returns
        m.ack(); // also a kind this client does not know: a newer billing's, skipped
      }
    } finally {
      this.consuming.delete(messages);
      await messages.close();
    }
  }

  async close(): Promise<void> {
    if (this.nc.isClosed()) return;
    await Promise.all([...this.consuming].map((m) => m.close())); // ends the events() loops
    await this.nc.drain();
  }
}
