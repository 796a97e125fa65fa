# coupon-pool service image: the package and its locked dependencies in a virtualenv, on a
# slim Python. Built in one stage and copied whole into the next, so nothing used only to
# build (wheels, caches, the build backend, pip itself) reaches the image.
FROM python:3.11-slim AS build
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The same pins as `make run` and CI (requirements/runtime.lock, made by `make lock`).
COPY requirements/runtime.lock requirements/
RUN pip install --no-cache-dir --require-virtualenv -r requirements/runtime.lock
COPY pyproject.toml README.md ./
COPY coupon_pool ./coupon_pool
COPY lua ./lua
RUN pip install --no-cache-dir --require-virtualenv --no-deps . \
 && pip uninstall --yes --require-virtualenv pip setuptools wheel

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home app
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HOST=0.0.0.0 \
    PORT=8080 \
    PYTHONUNBUFFERED=1
USER 10001
EXPOSE 8080
# On the port the service listens on (PORT), whatever it is.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ['PORT'], timeout=2)"]
CMD ["coupon-pool", "serve"]
