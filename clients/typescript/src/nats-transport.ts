import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager, JetStreamApiError, type JetStreamClient,
         type ConsumerMessages } from "@nats-io/jetstream";
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
    return new NatsTransport(await connect({ servers, name: options.name ?? "billing-client",
                                             maxReconnectAttempts: -1 }));
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

  async publishUsage(event: wire.UsageEvent, timeoutMs: number): Promise<{ duplicate: boolean }> {
    const h = headers();
    h.set("content-type", "application/json");
    try {
      const ack = await this.js.publish(usageSubject(event.user_id), JSON.stringify(event),
                                        { msgID: event.event_id, headers: h, timeout: timeoutMs,
                                          expect: { streamName: USAGE_STREAM } });
      return { duplicate: ack.duplicate };
    } catch (err) {
      throw unavailable(`publish ${usageSubject(event.user_id)}`, err);
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
