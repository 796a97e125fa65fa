REDIS_PORT ?= 6390
export REDIS_PORT

.PHONY: run test lint stop clean

run:  ## start Redis (unless REDIS_URL is set) and the service on PORT (default 8080)
	scripts/bootstrap.sh
	scripts/run.sh

test:  ## lint, type-check and run the whole test suite (it starts its own Redis servers)
	scripts/bootstrap.sh
	.venv/bin/ruff check coupon_pool tests scripts
	.venv/bin/ruff format --check coupon_pool tests scripts
	.venv/bin/mypy
	.venv/bin/pytest

lint:
	.venv/bin/ruff check coupon_pool tests scripts
	.venv/bin/ruff format --check coupon_pool tests scripts
	.venv/bin/mypy

stop:  ## stop the project-local Redis that `make run` started
	-redis-cli -p $(REDIS_PORT) shutdown

clean: stop
	rm -rf .venv .data
