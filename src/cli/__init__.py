"""The `mailjobs` command line (click): `cli.main` is the group; each module adds its commands."""
