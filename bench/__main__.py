"""make bench: every benchmark, each beside its raw baseline in the same run. `make bench BENCH=usage` runs one."""
import os

from bench import check_latency, ingress, messaging, usage_ingest, usage_query, webhooks

if __name__ == "__main__":
    which = os.environ.get("BENCH", "all")
    if which in ("all", "ingress"):
        ingress.main()
    if which in ("all", "usage"):
        usage_ingest.main()
    if which in ("all", "check"):
        check_latency.main()
    if which in ("all", "messaging"):
        messaging.main()
    if which in ("all", "usage_query"):
        usage_query.main()
    if which in ("all", "webhooks"):
        webhooks.main()
