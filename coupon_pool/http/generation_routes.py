"""The generation route: a batch of codes the service draws, made as a job. Declared here
and listed in routes.OPERATIONS."""

from __future__ import annotations

from .. import errors
from ..models import GenerationRequest
from ..results import Batch
from .auth import Role
from .inputs import Call
from .routing import Operation


async def generate(call: Call, body: GenerationRequest) -> Batch:
    """Answers at once with the new batch; its codes are stored by a job that any app
    process runs (taken over by another if that one dies), its progress in `generation`
    (GET /v1/batches/{batch}). Codes are drawn with a cryptographic RNG and are unique in
    the whole pool: a code that exists already is drawn again, never stored twice."""
    call.note(type=body.type, count=body.count)
    batch = await call.store.generate(body)
    call.note(batch=batch.batch)
    return batch


GENERATION_OPERATIONS = (
    Operation(
        method="POST", path="/v1/batches", handler=generate, tag="batches",
        summary="Generate a batch of up to 1,000,000 coupons", role=Role.ADMIN, body=GenerationRequest,
        response=Batch, status=202, errors=(errors.PatternTooSmall, errors.BatchConflict),
    ),
)  # fmt: skip
