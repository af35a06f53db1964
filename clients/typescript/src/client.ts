import { BillingError, BillingUnavailable, LimitExceeded } from "./errors.js";
import { HttpTransport, type HttpOptions } from "./http-transport.js";
import { DEFAULT_TTL, statusPageUrl } from "./links.js";
import { asPolicy, Degrader, type Policy } from "./policy.js";
import type { Transport, Verb } from "./transport.js";
import * as t from "./types.js";
import type * as wire from "./wire.js";

export interface ClientOptions {
  /** How long a request to billing may take (ms): 2000; checkout and portal links: 15000. */
  timeoutMs?: number;
  /** How long trackUsage waits for the broker's (or ingress's) confirmation (ms): 5000. */
  publishTimeoutMs?: number;
  /** NATS: how long trackUsage retries a publish that got no confirmation, with the same event id, before it throws
   * BillingUnavailable (ms): 15000, longer than a cluster's leader election; never less than publishTimeoutMs. */
  publishRetryForMs?: number;
  /** What check and reserve decide when billing does not answer: "raise" (the default), "allow", "deny", or an
   * Unavailable policy (last-known answers, per-reason overrides). */
  onUnavailable?: Policy;
  /** For statusPageUrl: the public base URL of ingress, and its STATUS_PAGE_SECRET. */
  publicBaseUrl?: string;
  statusPageSecret?: string;
  /** Where degraded decisions are logged (console by default). */
  logger?: Pick<Console, "warn">;
  /** The clock status page links expire by (ms since the epoch); Date.now by default. */
  now?: () => number;
}

export interface CallOptions {
  timeoutMs?: number;
}

export interface DecisionOptions extends CallOptions {
  /** This call's policy when billing does not answer, instead of the client's. */
  onUnavailable?: Policy;
}

export type HttpConnectOptions = HttpOptions & ClientOptions;

/** One per AI response; keep it and pass it again when retrying trackUsage. */
export const newEventId = (): string => `ev_${crypto.randomUUID().replaceAll("-", "")}`;

/** The chat service's client of the billing backend: usage, limit checks, status and links, over a transport. */
export class BillingClient {
  private readonly degrader: Degrader;

  constructor(readonly transport: Transport, private readonly options: ClientOptions = {}) {
    this.degrader = new Degrader(asPolicy(options.onUnavailable ?? "raise"), options.logger ?? console);
  }

  /** The HTTPS transport (ingress /v1); the `@polar-billing/client` entry also takes `{ servers }` for NATS. */
  static async connect(options: HttpConnectOptions): Promise<BillingClient> {
    return new BillingClient(new HttpTransport(options), options);
  }

  /** How many check/reserve decisions were made without billing's answer (they are also logged). */
  get degradedDecisions(): number {
    return this.degrader.count;
  }

  newEventId(): string {
    return newEventId();
  }

  async close(): Promise<void> {
    await this.transport.close();
  }

  private request(verb: Verb, body: object, timeoutMs = this.options.timeoutMs ?? 2000): Promise<unknown> {
    return this.transport.request(verb, body, timeoutMs);
  }

  /** Publish one usage event; resolves once it is stored. Throws BillingError (invalid_request) for a bad event and
   * BillingUnavailable when it was not confirmed within publishRetryForMs (over NATS it retries until then through a
   * server loss or a leader election): retry with the same eventId, a duplicate is stored once. */
  async trackUsage(usage: t.UsageEvent): Promise<t.TrackedUsage> {
    const event = t.toWire<wire.UsageEvent>({
      ...usage, eventId: usage.eventId ?? newEventId(), occurredAt: usage.occurredAt ?? new Date(),
    });
    validate(event);
    const timeoutMs = this.options.publishTimeoutMs ?? 5000;
    const retryForMs = Math.max(this.options.publishRetryForMs ?? 15_000, timeoutMs);
    const { duplicate } = await this.transport.publishUsage(event, timeoutMs, retryForMs);
    return { eventId: event.event_id, duplicate };
  }

  /** May the user have one more AI response? */
  async check(request: t.CheckRequest, options: DecisionOptions = {}): Promise<t.CheckDecision> {
    let decision: t.CheckDecision;
    try {
      decision = t.checkDecision(await this.request("check", t.toWire<wire.CheckRequest>(request),
                                                    options.timeoutMs) as wire.CheckReply);
    } catch (err) {
      return this.withoutBilling("check", request.userId, options, err);
    }
    this.degrader.remember(request.userId, decision);
    return decision;
  }

  /** `check`, throwing LimitExceeded when the answer is no. */
  async require(request: t.CheckRequest, options: DecisionOptions = {}): Promise<t.CheckDecision> {
    const decision = await this.check(request, options);
    if (!decision.allowed) throw new LimitExceeded(decision);
    return decision;
  }

  /** Check and hold the estimate, atomically; settle it with trackUsage({ reservationId }) or release it. */
  async reserve(request: t.ReserveRequest, options: DecisionOptions = {}): Promise<t.ReserveDecision> {
    let decision: t.ReserveDecision;
    try {
      decision = t.reserveDecision(await this.request("reserve", t.toWire<wire.ReserveRequest>(request),
                                                      options.timeoutMs) as wire.ReserveReply);
    } catch (err) {
      return { ...this.withoutBilling("reserve", request.userId, options, err), reservationId: null };
    }
    this.degrader.remember(request.userId, decision);
    return decision;
  }

  /** Release a reservation that will not be used: false when it was already settled, released or expired. */
  async release(reservationId: string, options: CallOptions = {}): Promise<boolean> {
    const body: wire.ReleaseRequest = { reservation_id: reservationId };
    return (await this.request("release", body, options.timeoutMs) as wire.ReleaseReply).released;
  }

  /** Plan, subscription, limits and credits. */
  async status(userId: string, options: CallOptions = {}): Promise<t.Status> {
    const body: wire.StatusRequest = { user_id: userId };
    return t.status(await this.request("status", body, options.timeoutMs) as wire.StatusReply);
  }

  /** Where the user's tokens went and what they cost (usage-sync's daily rollups): by day, model and / or thread. */
  async usage(query: t.UsageQuery, options: CallOptions = {}): Promise<t.UsageReport> {
    return t.usageReport(await this.request("usage", t.usageQuery(query), options.timeoutMs) as wire.UsageReport);
  }

  /** A Polar checkout link for a plan. */
  async checkoutUrl(request: t.CheckoutRequest, options: CallOptions = {}): Promise<t.Link> {
    return t.link(await this.request("checkout", t.toWire<wire.CheckoutRequest>(request),
                                     options.timeoutMs ?? 15_000) as wire.LinkReply);
  }

  /** The customer-portal link: it carries a bearer token; redirect to it, never log or store it. */
  async portalUrl(request: t.PortalRequest, options: CallOptions = {}): Promise<t.Link> {
    return t.link(await this.request("portal", t.toWire<wire.PortalRequest>(request),
                                     options.timeoutMs ?? 15_000) as wire.LinkReply);
  }

  /** A signed link to the user's status page, valid `ttlSeconds` (15 min). */
  async statusPageUrl(userId: string, ttlSeconds = DEFAULT_TTL): Promise<string> {
    const { publicBaseUrl, statusPageSecret, now } = this.options;
    if (!publicBaseUrl || !statusPageSecret) {
      throw new Error("BillingClient needs publicBaseUrl and statusPageSecret for status page links");
    }
    return statusPageUrl(publicBaseUrl, statusPageSecret, userId, ttlSeconds, (now ?? Date.now)() / 1000);
  }

  /** Plan changes and usage thresholds through the chat service's own durable consumer on BILLING_EVENTS (created
   * on first use; processes sharing a durable share the events). Each event is acked when the loop body that got
   * it returns; if the body throws, the event comes back after 30 s. A new durable starts with the events published
   * from then on (`fromStart`: the stream's 7 days). NATS only. */
  events(options: { durable: string; fromStart?: boolean }): AsyncIterable<t.BillingEvent> {
    if (!this.transport.events) {
      throw new Error("events() needs the NATS transport (BillingClient.connect({ servers })): billing's events " +
                      "are not served over HTTP");
    }
    return this.transport.events(options.durable, options.fromStart ?? false);
  }

  private withoutBilling(verb: string, userId: string, options: DecisionOptions, err: unknown): t.CheckDecision {
    if (!(err instanceof BillingUnavailable)) throw err;
    const policy = options.onUnavailable ? asPolicy(options.onUnavailable) : this.degrader.policy;
    return this.degrader.decide(verb, userId, policy, err);
  }
}

/** The checks billing makes of a usage event, made before it is published: over NATS a bad event would only be
 * dead-lettered, so the caller learns of it here, as over HTTP (invalid_request). */
function validate(e: wire.UsageEvent): void {
  const fail = (field: string, message: string): never => {
    throw new BillingError({ code: "invalid_request", message: `${field}: ${message}`, field, retryAfter: null });
  };
  for (const [field, max] of [["event_id", 128], ["user_id", 256], ["thread_id", 256], ["model", 200]] as const) {
    const v = e[field];
    if (typeof v !== "string" || v.length < 1 || v.length > max) fail(field, `must be 1 to ${max} characters`);
  }
  for (const field of ["input_tokens", "output_tokens", "cached_input_tokens"] as const) {
    const v = e[field] ?? 0;
    if (!Number.isInteger(v) || v < 0) fail(field, "must be a whole number, 0 or more");
  }
}
