import type { CheckDecision, ErrorBody } from "./types.js";

/** Billing answered with an error: `code`, `message`, `field`, `retryAfter` as in the wire contract. */
export class BillingError extends Error {
  override readonly name = "BillingError";
  readonly code: string;
  readonly field: string | null;
  readonly retryAfter: number | null;

  constructor(body: ErrorBody) {
    super(body.message);
    this.code = body.code;
    this.field = body.field ?? null;
    this.retryAfter = body.retryAfter ?? null;
  }
}

/** Billing did not answer in time (no billing process running, NATS or ingress unreachable, or a timeout). */
export class BillingUnavailable extends Error {
  override readonly name = "BillingUnavailable";
}

/** Thrown by `require()`: the user may not have this response, with the limit that binds and when it resets. */
export class LimitExceeded extends Error {
  override readonly name = "LimitExceeded";
  readonly limit: string | null;
  readonly resetsAt: Date | null;

  constructor(readonly decision: CheckDecision) {
    super(`${decision.reason} (resets at ${decision.resetsAt?.toISOString() ?? "never"})`);
    this.limit = decision.reason;
    this.resetsAt = decision.resetsAt;
  }
}
