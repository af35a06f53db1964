"""Code shared by every service: contracts, settings, database, NATS topology, plans, the embedded servers."""
