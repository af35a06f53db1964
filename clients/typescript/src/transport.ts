import type * as wire from "./wire.js";
import type { BillingEvent } from "./types.js";

export type Verb = "check" | "reserve" | "release" | "status" | "usage" | "checkout" | "portal";

/** How the client reaches billing. A transport answers with the wire reply, or throws BillingError (billing's error
 * reply) or BillingUnavailable (no answer in time). */
export interface Transport {
  request(verb: Verb, body: object, timeoutMs: number): Promise<unknown>;
  /** Resolves once the usage event is stored (JetStream's PubAck, or ingress's 200). `timeoutMs` per attempt; over
   * NATS, transient failures are retried with the same event id until `retryForMs` has passed. */
  publishUsage(event: wire.UsageEvent, timeoutMs: number, retryForMs: number): Promise<{ duplicate: boolean }>;
  /** Billing's events through a durable consumer (NATS only); each acked when the consumer asks for the next. */
  events?(durable: string, fromStart: boolean): AsyncIterable<BillingEvent>;
  close(): Promise<void>;
}
