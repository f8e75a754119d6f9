"""Mail transports (Gmail API, SMTP, outbox, null), their credentials and the far side's learned limits."""
