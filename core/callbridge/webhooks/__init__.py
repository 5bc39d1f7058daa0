"""Lifecycle webhooks: events, subscriptions, signing, SSRF-safe durable delivery."""
