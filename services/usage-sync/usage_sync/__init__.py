"""Usage-sync: the chat service's usage events → ledger and counters in PostgreSQL → batches to Polar's meters."""
