/** The NATS names the chat service and the backend agree on (polar_billing_client/subjects.py). */
export const USAGE_STREAM = "USAGE";
export const USAGE_SUBJECT_PREFIX = "usage.event"; // usage.event.<subject token of the user id>
export const RPC_PREFIX = "billing.rpc"; // billing.rpc.<verb>, core request/reply
export const BILLING_EVENT_PREFIX = "billing.event";
export const BILLING_EVENTS_STREAM = "BILLING_EVENTS";
export const SUBSCRIPTION_CHANGED = `${BILLING_EVENT_PREFIX}.subscription.changed`;
export const USAGE_THRESHOLD = `${BILLING_EVENT_PREFIX}.usage.threshold`;

const PLAIN = /^[A-Za-z0-9_\-:@+=]{1,256}$/;
const utf8 = new TextEncoder();

/** Unpadded base64url, with what every runtime has (no Buffer). */
export function base64url(data: Uint8Array | string): string {
  const bytes = typeof data === "string" ? utf8.encode(data) : data;
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** A NATS subject token for any user id: the id itself when it is made only of letters, digits and `_-:@+=`;
 * otherwise `~` and the base64url of its UTF-8 bytes, unpadded. */
export function subjectToken(userId: string): string {
  return PLAIN.test(userId) ? userId : `~${base64url(userId)}`;
}

export const usageSubject = (userId: string): string => `${USAGE_SUBJECT_PREFIX}.${subjectToken(userId)}`;
export const rpcSubject = (verb: string): string => `${RPC_PREFIX}.${verb}`;
