"""Signed event webhooks (Standard Webhooks): one POST to an endpoint, the runners' delivery thread, the API's routes."""
