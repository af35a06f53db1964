import { BillingError, BillingUnavailable } from "./errors.js";
import type { Transport, Verb } from "./transport.js";
import { errorBody } from "./types.js";
import type * as wire from "./wire.js";

export interface HttpOptions {
  /** Ingress's base URL, e.g. https://billing.example.com (the API is under /v1). */
  url: string;
  /** One of ingress's CHAT_API_KEYS, sent as `Authorization: Bearer <key>`. */
  apiKey: string;
  /** A fetch of your own (tests, proxies); the global one by default. */
  fetch?: typeof fetch;
}

/** The chat service's API over HTTPS (ingress /v1): fetch only, so it runs on edge runtimes. */
export class HttpTransport implements Transport {
  private readonly base: string;
  private readonly fetch: typeof fetch;

  constructor(private readonly options: HttpOptions) {
    this.base = options.url.replace(/\/+$/, "");
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  private async call(method: "GET" | "POST", path: string, body: object | undefined, timeoutMs: number)
    : Promise<unknown> {
    let response: Response;
    let text: string;
    try {
      response = await this.fetch(this.base + path, {
        method, signal: AbortSignal.timeout(timeoutMs),
        headers: { authorization: `Bearer ${this.options.apiKey}`, accept: "application/json",
                   ...(body ? { "content-type": "application/json" } : {}) },
        body: body ? JSON.stringify(body) : undefined,
      });
      text = await response.text();
    } catch (err) { // network failure, timeout
      throw new BillingUnavailable(`${method} ${path}: ${(err as Error).message}`, { cause: err });
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    if (response.ok && json !== undefined) return json;
    const error = (json as Partial<wire.ErrorReply> | undefined)?.error;
    if (error && typeof error.code === "string") {
      if (error.code === "unavailable") throw new BillingUnavailable(`${method} ${path}: ${error.message}`);
      throw new BillingError(errorBody(error));
    }
    if (response.status >= 502 && response.status <= 504) { // a proxy's answer: ingress is not there
      throw new BillingUnavailable(`${method} ${path}: HTTP ${response.status}`);
    }
    throw new BillingError({ code: "internal", message: `HTTP ${response.status} without an error body`,
                             field: null, retryAfter: null });
  }

  request(verb: Verb, body: object, timeoutMs: number): Promise<unknown> {
    if (verb === "status") {
      const { user_id } = body as wire.StatusRequest;
      return this.call("GET", `/v1/status/${encodeURIComponent(user_id)}`, undefined, timeoutMs);
    }
    if (verb === "usage") { // POST /v1/usage records usage; the report is a GET
      const { user_id, from, to, group_by, limit } = body as wire.UsageQuery;
      const query = new URLSearchParams();
      if (from) query.set("from", from);
      if (to) query.set("to", to);
      if (group_by?.length) query.set("group_by", group_by.join(","));
      if (limit) query.set("limit", String(limit));
      const q = query.toString();
      return this.call("GET", `/v1/usage/${encodeURIComponent(user_id)}${q ? `?${q}` : ""}`, undefined, timeoutMs);
    }
    return this.call("POST", `/v1/${verb}`, body, timeoutMs);
  }

  async publishUsage(event: wire.UsageEvent, timeoutMs: number): Promise<{ duplicate: boolean }> {
    const stored = await this.call("POST", "/v1/usage", event, timeoutMs) as { duplicates: number };
    return { duplicate: stored.duplicates > 0 };
  }

  async close(): Promise<void> {}
}
