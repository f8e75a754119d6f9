"""Attachments and inline images (issue 16): uploads stored in chunks, what Gmail refuses to
carry, a job's files checked at POST, and the files of one recipient's message at send."""
