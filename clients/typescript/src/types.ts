/** The client's public types: the wire contracts (wire.ts, generated from the Python models) in camelCase, with
 * timestamps as Dates. They are derived from the wire types, and the mappings below are checked against both, so a
 * contract change breaks this build until the client follows it. */
import type * as wire from "./wire.js";

type CamelKey<S extends string> = S extends `${infer H}_${infer T}` ? `${H}${Capitalize<CamelKey<T>>}` : S;
type DateOf<T> = T extends string ? Date : T;

/** A wire type in camelCase: the `Dates` fields as Date, the `Replaced` fields with the types given. */
export type Camel<W, Dates extends keyof W = never, Replaced extends { [K in keyof W]?: unknown } = {}> = {
  [K in keyof W as CamelKey<K & string>]: K extends keyof Replaced ? Replaced[K] : K extends Dates ? DateOf<W[K]> : W[K];
};

// --- requests ----------------------------------------------------------------------------------------------------
export type CheckRequest = Camel<wire.CheckRequest>;
export type ReserveRequest = Camel<wire.ReserveRequest>;
export type CheckoutRequest = Camel<wire.CheckoutRequest>;
export type PortalRequest = Camel<wire.PortalRequest>;
/** One AI response's usage. `eventId`: one per response (newEventId()), the same on every retry; `occurredAt`: now. */
export type UsageEvent = Omit<Camel<wire.UsageEvent, "occurred_at">, "eventId" | "occurredAt"> & {
  eventId?: string;
  occurredAt?: Date;
};

// --- answers -----------------------------------------------------------------------------------------------------
export type LimitName = "tokens_per_month" | "threads_per_month" | "messages_per_day";
export type LimitState = Camel<wire.LimitState, "resets_at">;
/** Keyed by the limit's wire name (tokens_per_month, …); a newer billing may add limits. */
export type Limits = Record<LimitName, LimitState> & { [limit: string]: LimitState | undefined };
export type DegradedPolicy = "allow" | "deny" | "last_known";
/** Set by the client, never by billing: the decision was made without billing's answer. */
export type Degraded = Camel<wire.Degraded, never, { policy: DegradedPolicy }>;
export type CheckDecision = Camel<wire.CheckReply, "resets_at", { limits: Limits }> & { degraded?: Degraded };
export type ReserveDecision = Camel<wire.ReserveReply, "resets_at", { limits: Limits }> & { degraded?: Degraded };
export type Credits = Camel<wire.Credits>;
export type Status = Camel<wire.StatusReply, "current_period_start" | "current_period_end", { limits: Limits }>;
export type Link = Camel<wire.LinkReply, "expires_at">;
export type ErrorBody = Camel<wire.ErrorBody>;
export type SubscriptionChanged = { type: "subscription.changed" } &
  Camel<wire.SubscriptionChanged, "current_period_end" | "occurred_at">;
export type UsageThreshold = { type: "usage.threshold" } & Camel<wire.UsageThreshold, "resets_at">;
export type BillingEvent = SubscriptionChanged | UsageThreshold;
/** trackUsage's answer: the event id (keep it to retry) and whether billing already had it. */
export type UsageGrouping = "day" | "model" | "thread";
/** Where the user's tokens went: UTC days, `from` included and `to` not (YYYY-MM-DD), by default the current billing
 * period; grouped by up to two of day, model, thread; `limit`: the top N models or threads, the rest as "other". */
export type UsageQuery = { userId: string; from?: string; to?: string; groupBy?: UsageGrouping[]; limit?: number };
export type UsageSums = Camel<wire.UsageSums>;
export type UsageRow = Camel<wire.UsageRow>;
export type UsageReport = { from: string; to: string; currency: string; totals: UsageSums; rows: UsageRow[] };

export function usageQuery(q: UsageQuery): wire.UsageQuery {
  return { user_id: q.userId, from: q.from ?? null, to: q.to ?? null,
           group_by: (q.groupBy ?? []) as wire.UsageQuery["group_by"], limit: q.limit ?? null };
}

function usageSums(w: wire.UsageSums): UsageSums {
  return { events: w.events, inputTokens: w.input_tokens, outputTokens: w.output_tokens,
           cachedInputTokens: w.cached_input_tokens, billableTokens: w.billable_tokens, costUsd: w.cost_usd,
           unpricedEvents: w.unpriced_events };
}

export function usageReport(w: wire.UsageReport): UsageReport {
  return { from: w.from, to: w.to, currency: w.currency ?? "usd", totals: usageSums(w.totals),
           rows: w.rows.map(r => ({ ...usageSums(r), day: r.day ?? null, model: r.model ?? null,
                                    threadId: r.thread_id ?? null })) };
}

export type TrackedUsage = { eventId: string; duplicate: boolean };

// --- mappings ----------------------------------------------------------------------------------------------------
const date = <T extends string | null | undefined>(v: T): DateOf<T> => (typeof v === "string" ? new Date(v) : v) as DateOf<T>;

/** A request in its wire form: snake_case keys, Dates as RFC 3339, absent and null fields left out. */
export function toWire<W>(request: Camel<W, keyof W & `${string}_at`>): W {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(request)) {
    if (value === undefined || value === null) continue;
    out[key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)] = value instanceof Date ? value.toISOString() : value;
  }
  return out as W;
}

const limitState = (w: wire.LimitState): LimitState => ({ used: w.used, limit: w.limit, resetsAt: date(w.resets_at) });

function limits(w: wire.CheckReply["limits"]): Limits {
  return Object.fromEntries(Object.entries(w).flatMap(([k, v]) => (v ? [[k, limitState(v)]] : []))) as Limits;
}

export const checkDecision = (w: wire.CheckReply): CheckDecision => ({
  allowed: w.allowed, plan: w.plan, reason: w.reason, resetsAt: date(w.resets_at), limits: limits(w.limits),
  overage: w.overage,
});

export const reserveDecision = (w: wire.ReserveReply): ReserveDecision => ({
  ...checkDecision(w), reservationId: w.reservation_id ?? null,
});

export const status = (w: wire.StatusReply): Status => ({
  plan: w.plan, status: w.status, currentPeriodStart: date(w.current_period_start),
  currentPeriodEnd: date(w.current_period_end), cancelAtPeriodEnd: w.cancel_at_period_end, limits: limits(w.limits),
  credits: { granted: w.credits.granted, used: w.credits.used, balance: w.credits.balance },
  customerId: w.customer_id,
});

export const link = (w: wire.LinkReply): Link => ({
  url: w.url, expiresAt: date(w.expires_at), checkoutId: w.checkout_id ?? null,
});

export const errorBody = (w: wire.ErrorBody): ErrorBody => ({
  code: w.code, message: w.message, field: w.field ?? null, retryAfter: w.retry_after ?? null,
});

export const subscriptionChanged = (w: wire.SubscriptionChanged): SubscriptionChanged => ({
  type: "subscription.changed", userId: w.user_id, oldPlan: w.old_plan, newPlan: w.new_plan,
  oldStatus: w.old_status, status: w.status, subscriptionId: w.subscription_id,
  currentPeriodEnd: date(w.current_period_end), cancelAtPeriodEnd: w.cancel_at_period_end, webhookId: w.webhook_id,
  occurredAt: date(w.occurred_at),
});

export const usageThreshold = (w: wire.UsageThreshold): UsageThreshold => ({
  type: "usage.threshold", userId: w.user_id, limit: w.limit, percent: w.percent, used: w.used,
  limitValue: w.limit_value, resetsAt: date(w.resets_at),
});
