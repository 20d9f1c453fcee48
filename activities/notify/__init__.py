"""Notifications: rendering, e-mail over SMTP, signed webhooks, the outbox relay."""
