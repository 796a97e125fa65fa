"""Sentences of README.md and docs/architecture.md that the code can check: a sentence about
the code that is no longer true is a bug."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx

from coupon_pool.audit import OPS
from coupon_pool.models import CouponType
from coupon_pool.pool.keys import Keys
from coupon_pool.pool.library import guarded
from support import REPO

README = (REPO / "README.md").read_text()
ARCHITECTURE = (REPO / "docs" / "architecture.md").read_text()
# A key as the docs name one: its hash tag, then parts, a placeholder such as <user_id> one too.
KEY_MENTION = re.compile(r"\{cp(?::[0-9i]+)?\}(?::(?:<[^>]+>|[A-Za-z0-9_-]+))+")


def key_shapes() -> list[re.Pattern[str]]:
    """Each key keys.py builds, as a pattern: any tag of the pool, any type, any placeholder."""
    k, t, x = Keys("cp"), CouponType.STANDARD, "X"
    built = [
        k.stats, k.exhausted, k.audit, k.purge_lock, k.shard_count, k.megadeal_claims, k.megadeal_queue,
        k.megadeal_alive, k.megadeal_slots, k.megadeal_window, k.megadeal_ticket, k.megadeal_high_water,
        k.coupon(x), k.available(t), k.draining(t), k.held(t, x), k.user_coupons(t, x), k.tracked_prefix + x,
        k.idempotency(x, x), k.key_claim(k.idempotency(x, x)), k.megadeal_wake(x), str(guarded([k.stats])[0]),
        k.failed_lookups(x), k.megadeal_heard, k.due(t), k.lapsed(t, x), k.rules, k.batch_stats(x),
        k.batch_codes(x), k.batch(x), k.batches, k.jobs, k.job_owners, k.audit_dropped, k.feeds, k.levels,
        k.webhook_lease(x), k.webhook_parked(x), k.webhook_counts(x),
    ]  # fmt: skip
    shapes = []
    for key in built:
        pattern = re.escape(key).replace(re.escape("{cp}"), r"\{cp(:([0-9]+|i))?\}")
        pattern = pattern.replace("STANDARD", "(<TYPE>|FREE|STANDARD|MEGADEAL)")
        pattern = pattern.replace("X", r"(<[^>]+>|[^:]+)")
        shapes.append(re.compile(pattern))
    return shapes


def test_every_key_the_docs_name_is_one_keys_py_builds() -> None:
    shapes = key_shapes()
    for doc in (README, ARCHITECTURE):
        for found in KEY_MENTION.finditer(doc):
            if doc[found.end() :].startswith((":...", "...")):  # a key cut short: not one to check
                continue
            assert any(shape.fullmatch(found.group()) for shape in shapes), found.group()


def test_every_audit_op_has_a_row_in_the_audit_table_in_the_registry_order() -> None:
    # audit.OPS is held to what lua/*.lua writes by tests/pool/test_audit.py.
    table = ARCHITECTURE[ARCHITECTURE.index("| `op` | fields |") :].split("\n\n")[0]
    assert tuple(row.split(" | ")[0].strip("|` ") for row in table.splitlines()[2:]) == OPS


def test_readme_names_every_op_webhook_ops_accepts() -> None:
    row = next(line for line in README.splitlines() if line.startswith("| `WEBHOOK_OPS` |"))
    allowed = row.split(" | ")[2]
    assert re.findall(r"`(\w+)`", allowed) == list(OPS)


def test_the_megadeal_admission_steps_are_told_in_the_scripts_order() -> None:
    script = (REPO / "lua" / "megadeal_enter.lua").read_text()
    body = script[script.index("local k = ") :]
    admission = ARCHITECTURE[ARCHITECTURE.index("**Admission**") :]
    told = admission.index("(`INCR`") < admission.index("`pool_empty` at once")
    assert told == (body.index("redis.call('INCR', counter)") < body.index("return { 'pool_empty'"))


async def test_readme_shows_every_field_of_the_health_answers(client: httpx.AsyncClient) -> None:
    row = next(line for line in README.splitlines() if line.startswith("| `GET /healthz`, `GET /readyz`"))
    for path in ("/healthz", "/readyz"):
        answer = await client.get(path)
        assert answer.status_code == 200
        for field in answer.json():
            assert f'"{field}"' in row, (path, field)


def test_the_python_in_the_docs_passes_the_projects_lint_and_format(tmp_path: Path) -> None:
    """Code a reader copies (README's verify, say) is held to the same ruff rules as ours."""
    snippets = [
        block
        for doc in (README, ARCHITECTURE)
        for block in re.findall(r"```python\n(.*?)```", doc, re.DOTALL)
    ]
    assert snippets  # README's verify at least
    for i, snippet in enumerate(snippets):
        (tmp_path / f"snippet_{i}.py").write_text(snippet)
    config = ["--config", str(REPO / "pyproject.toml")]
    for command in (["check", *config], ["format", "--check", "--diff", *config]):
        done = subprocess.run([sys.executable, "-m", "ruff", *command, str(tmp_path)],
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
