"""mailjobs: templated bulk email through Gmail, queued in MySQL/MariaDB, sent by runners.

Nothing is imported here: `mailjobs.entry` must install its signal handlers before anything
slow is loaded (see entry.py), and importing any sub-module runs this file first.
"""
