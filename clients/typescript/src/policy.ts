import type { BillingUnavailable } from "./errors.js";
import type { CheckDecision, DegradedPolicy, LimitState } from "./types.js";

export type Fallback = "raise" | "allow" | "deny";

/** What check and reserve decide when billing does not answer in time (polar_billing_client's `Unavailable`).
 * - `fallback`: "raise" (throw BillingUnavailable), "allow" or "deny".
 * - `lastKnownMaxAgeSeconds`: first reuse the user's last answer from billing if it is at most this old (the last
 *   answers of up to 10,000 users are kept, whatever the client's own policy, so a call's policy can ask for them).
 * - `byReason`: for a reused answer that refused, per limit: "allow" to fail open (say messages_per_day), "deny" to
 *   keep the refusal (the default for every reason). */
export interface Unavailable {
  fallback: Fallback;
  lastKnownMaxAgeSeconds?: number;
  byReason?: Record<string, "allow" | "deny">;
}

export type Policy = Fallback | Unavailable;

export const asPolicy = (p: Policy): Unavailable => (typeof p === "string" ? { fallback: p } : p);

const LAST_KNOWN_USERS = 10_000; // answers kept for last_known (least recently used go first)

type Known = { at: number; decision: CheckDecision };

/** Decisions made without billing: the user's last answer while fresh enough, else the fallback. */
export class Degrader {
  private readonly known = new Map<string, Known>();
  /** How many decisions were made without billing's answer. */
  count = 0;

  constructor(readonly policy: Unavailable, private readonly logger: Pick<Console, "warn">) {}

  remember(userId: string, d: CheckDecision): void {
    const { allowed, plan, reason, resetsAt, limits, overage } = d; // a reserve's, too, without its reservation
    this.known.delete(userId);
    this.known.set(userId, { at: performance.now(), decision: { allowed, plan, reason, resetsAt, limits, overage } });
    if (this.known.size > LAST_KNOWN_USERS) this.known.delete(this.known.keys().next().value!);
  }

  decide(verb: string, userId: string, policy: Unavailable, error: BillingUnavailable): CheckDecision {
    const known = this.known.get(userId);
    const age = known ? (performance.now() - known.at) / 1000 : undefined;
    let decision: CheckDecision;
    let label: DegradedPolicy;
    if (known && age !== undefined && policy.lastKnownMaxAgeSeconds !== undefined &&
        age <= policy.lastKnownMaxAgeSeconds) {
      label = "last_known";
      decision = { ...known.decision, degraded: { policy: label, ageSeconds: Math.round(age * 1000) / 1000 } };
      if (!decision.allowed && decision.reason && policy.byReason?.[decision.reason] === "allow") {
        decision = { ...decision, allowed: true, reason: null, resetsAt: null };
      }
    } else if (policy.fallback === "raise") {
      throw error;
    } else {
      label = policy.fallback;
      const empty = (): LimitState => ({ used: 0, limit: null, resetsAt: null });
      decision = {
        allowed: label === "allow", plan: "unknown", reason: label === "allow" ? null : "unavailable", resetsAt: null,
        limits: { tokens_per_month: empty(), threads_per_month: empty(), messages_per_day: empty() }, overage: false,
        degraded: { policy: label },
      };
    }
    this.count++;
    this.logger.warn("billing.degraded_decision", { verb, policy: label, userId, allowed: decision.allowed,
                                                    error: error.message });
    return decision;
  }
}
