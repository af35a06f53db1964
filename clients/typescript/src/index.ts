/** `@polar-billing/client`: the client over NATS (`{ servers }`) or HTTPS (`{ url, apiKey }`).
 *
 *   const billing = await BillingClient.connect({ servers: "nats://127.0.0.1:4222", onUnavailable: "allow" });
 *   const decision = await billing.check({ userId: "usr_1", model: "gpt-4o", threadId: "t1" });
 *   if (!decision.allowed) …                             // decision.reason, decision.resetsAt
 *   await billing.trackUsage({ userId: "usr_1", threadId: "t1", model: "gpt-4o", inputTokens: 812,
 *                              outputTokens: 96, eventId });  // the same eventId on every retry of this response
 */
import { BillingClient as HttpOnlyClient, type ClientOptions, type HttpConnectOptions } from "./client.js";
import { HttpTransport } from "./http-transport.js";
import { NatsTransport, type NatsOptions } from "./nats-transport.js";

export type NatsConnectOptions = NatsOptions & ClientOptions;
export { NatsTransport, type NatsOptions };
export { newEventId } from "./client.js";
export * from "./shared.js";

export class BillingClient extends HttpOnlyClient {
  /** `{ servers }`: NATS (the chat service's own backend); `{ url, apiKey }`: HTTPS through ingress. */
  static override async connect(options: NatsConnectOptions | HttpConnectOptions): Promise<BillingClient> {
    const transport = "servers" in options ? await NatsTransport.connect(options) : new HttpTransport(options);
    return new BillingClient(transport, options);
  }
}
