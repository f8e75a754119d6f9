# mailjobs: the two commands are `make run` and `make test`.
.PHONY: run test lint lock migrate worker bench clean-db

run:
	@scripts/setup.sh run
	.venv/bin/mailjobs serve

test:
	@scripts/setup.sh test
	.venv/bin/ruff check src tests bench
	.venv/bin/mypy
	.venv/bin/python -m pytest $(PYTEST_ARGS)

lint:
	@scripts/setup.sh test
	.venv/bin/ruff check src tests bench
	.venv/bin/mypy

# Re-pins requirements.lock and requirements-dev.lock (with hashes) from the ranges in requirements*.txt.
lock:
	scripts/lock.sh

migrate:
	@scripts/setup.sh run
	.venv/bin/mailjobs migrate

bench:
	@scripts/setup.sh test
	.venv/bin/python bench/enqueue.py

# Stops the project-local MariaDB if one was left running, and deletes its data.
clean-db:
	-@.venv/bin/python -c "from pathlib import Path; from mailjobs.db.local_mariadb import LocalMariaDB; LocalMariaDB(Path('var/mariadb')).stop()"
	rm -rf var/mariadb
