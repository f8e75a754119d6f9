# mailjobs: the two commands are `make run` and `make test`.
.PHONY: run test lint migrate worker bench clean-db

run:
	@scripts/setup.sh run
	.venv/bin/mailjobs serve

test:
	@scripts/setup.sh test
	.venv/bin/ruff check src tests bench
	.venv/bin/python -m pytest $(PYTEST_ARGS)

lint:
	@scripts/setup.sh test
	.venv/bin/ruff check src tests bench

migrate:
	@scripts/setup.sh run
	.venv/bin/mailjobs migrate

bench:
	@scripts/setup.sh test
	.venv/bin/python bench/enqueue.py

# Stops the project-local MariaDB if one was left running, and deletes its data.
clean-db:
	-@.venv/bin/python -c "import sys; sys.path.insert(0,'src'); from local_mariadb import LocalMariaDB; LocalMariaDB(__import__('pathlib').Path('var/mariadb')).stop()"
	rm -rf var/mariadb
