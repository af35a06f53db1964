"""Ingress: the HTTP edge. Verifies Polar webhooks and stores each one once in JetStream; serves the pages."""
