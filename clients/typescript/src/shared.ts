/** What both entries export besides the client itself. */
export type { CallOptions, ClientOptions, DecisionOptions, HttpConnectOptions } from "./client.js";
export { BillingError, BillingUnavailable, LimitExceeded } from "./errors.js";
export { HttpTransport, type HttpOptions } from "./http-transport.js";
export { DEFAULT_TTL, signStatusToken, statusPageUrl } from "./links.js";
export type { Fallback, Policy, Unavailable } from "./policy.js";
export { subjectToken } from "./subjects.js";
export type { Transport, Verb } from "./transport.js";
export type {
  BillingEvent, Camel, CheckDecision, CheckoutRequest, CheckRequest, Credits, Degraded, DegradedPolicy, ErrorBody,
  LimitName, Limits, LimitState, Link, PortalRequest, ReserveDecision, ReserveRequest, Status, SubscriptionChanged,
  TrackedUsage, UsageEvent, UsageThreshold,
} from "./types.js";
export type * as wire from "./wire.js";
