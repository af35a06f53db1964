/** `@polar-billing/client/http`: the client over HTTPS only (ingress /v1), with nothing but fetch and Web Crypto, so
 * it bundles for edge runtimes (Vercel Edge, Cloudflare Workers, Convex). */
export { BillingClient, newEventId } from "./client.js";
export * from "./shared.js";
