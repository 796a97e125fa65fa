REDIS_PORT ?= 6390
export REDIS_PORT

.PHONY: run test lint stop check lock docker-test clean

run:  ## start Redis (unless REDIS_URL is set), then the service on PORT (default 8080), in the foreground
	scripts/bootstrap.sh
	scripts/run.sh

test:  ## lint, type-check and run the whole test suite (it starts its own Redis servers)
	scripts/bootstrap.sh --test
	.venv/bin/ruff check coupon_pool support tests measure
	.venv/bin/ruff format --check coupon_pool support tests measure
	.venv/bin/mypy
	.venv/bin/hadolint Dockerfile
	.venv/bin/pytest

lint:
	.venv/bin/ruff check coupon_pool support tests measure
	.venv/bin/ruff format --check coupon_pool support tests measure
	.venv/bin/mypy
	.venv/bin/hadolint Dockerfile

stop:  ## stop what `make run` started (the service, and its Redis); quiet when nothing runs
	@scripts/stop.sh

check:  ## coupon-pool check on make run's Redis (or REDIS_URL)
	REDIS_URL=$${REDIS_URL:-redis://127.0.0.1:$(REDIS_PORT)/0} .venv/bin/coupon-pool check

lock:  ## pin every dependency again (requirements/*.lock), for the image, make run and CI alike
	.venv/bin/uv pip compile pyproject.toml --universal --python-version 3.11 -q -o requirements/runtime.lock
	.venv/bin/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 -q \
	  -c requirements/runtime.lock -o requirements/dev.lock

docker-test:  ## build the image, and run it and docker-compose for real (needs Docker; see scripts/docker_smoke.sh)
	scripts/docker_smoke.sh

clean: stop
	rm -rf .venv .data
