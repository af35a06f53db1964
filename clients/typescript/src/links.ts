import { base64url } from "./subjects.js";

/** Status page links are valid this long by default (seconds). */
export const DEFAULT_TTL = 15 * 60;

const utf8 = new TextEncoder();

/** The status page token, as polar_billing_client.links.sign makes it (Web Crypto, so it runs on edge runtimes):
 * base64url(user id) "." expiry (unix seconds) "." base64url(HMAC-SHA256(secret, "status:" user id "." expiry)). */
export async function signStatusToken(secret: string, userId: string, ttlSeconds = DEFAULT_TTL,
                                      nowSeconds = Date.now() / 1000): Promise<string> {
  const expires = Math.trunc(nowSeconds + ttlSeconds);
  const key = await crypto.subtle.importKey("raw", utf8.encode(secret), { name: "HMAC", hash: "SHA-256" }, false,
                                            ["sign"]);
  const mac = await crypto.subtle.sign("HMAC", key, utf8.encode(`status:${userId}.${expires}`));
  return `${base64url(userId)}.${expires}.${base64url(new Uint8Array(mac))}`;
}

/** `<base>/subscription/status?token=…`, as polar_billing_client.links.status_page_url makes it. */
export async function statusPageUrl(baseUrl: string, secret: string, userId: string, ttlSeconds = DEFAULT_TTL,
                                    nowSeconds?: number): Promise<string> {
  const token = await signStatusToken(secret, userId, ttlSeconds, nowSeconds);
  return `${baseUrl.replace(/\/+$/, "")}/subscription/status?token=${encodeURIComponent(token)}`;
}
