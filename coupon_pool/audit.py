"""The audit trail's ops: every value an entry's ``op`` can take.

The entries are written by lua/*.lua, each by the call that does its operation; ``OPS`` is the
one list of their ops in Python, so a setting that names ops (WEBHOOK_OPS) can refuse one that
no entry carries. A test holds it to the scripts (tests/pool/test_audit.py), and
docs/architecture.md's audit stream table has a row per op, in this order.
"""

OPS = (
    "upload", "allocate", "redeem", "release", "rollback", "hold_expired", "purge", "batch_rules",
    "disable", "enable", "pool_low", "pool_recovered",
)  # fmt: skip
