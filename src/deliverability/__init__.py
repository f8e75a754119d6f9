"""Keeping mail wanted and welcome: address checks, bounces and complaints, one-click unsubscribe."""
