"""The operators' dashboard: server-rendered pages (its templates are in `templates/dashboard/`)."""
