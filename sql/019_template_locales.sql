-- mailjobs schema, version 19: each recipient's language (issue 16): template variants by
-- language tag, and the variant each recipient was given.

-- A stored template's versions by BCP 47 tag, as JSON: {"zh-Hant": {"subject", "html", "text",
-- "from_name"}, ...} (NULL: none, the template's own subject/html/text for everybody). Part of
-- the version: an edit that changes a language makes the next version, as for the rest.
ALTER TABLE templates ADD COLUMN variants LONGTEXT NULL;

-- The job's copy of the variants (inline ones, or the stored template's at POST), read by the
-- runners; the same JSON shape.
ALTER TABLE jobs ADD COLUMN template_variants LONGTEXT NULL;

-- The language asked for (the recipient's locale, else the job's; canonical casing) and the
-- variant it was given, chosen at POST by the fallback chain (locales.py) and sent as such
-- even when retried; NULL locale_used: the template's default. Both appended at the end, so
-- MariaDB adds them in place (ALGORITHM=INSTANT) whatever the table's size.
ALTER TABLE job_recipients
  ADD COLUMN locale VARCHAR(35) CHARACTER SET ascii COLLATE ascii_bin NULL,
  ADD COLUMN locale_used VARCHAR(35) CHARACTER SET ascii COLLATE ascii_bin NULL;
