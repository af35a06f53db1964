"""The one messaging layer every service uses: publish (always with a `Nats-Msg-Id`), durable consumers of single
messages or batches, request/reply endpoints, dead letters and outboxes. Why it sits on nats-py rather than
FastStream's subscribers: docs/messaging.md.
"""
