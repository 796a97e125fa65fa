"""Large uploads are validated and written by a worker process, off the server's event loop.

Validating 50,000 coupons is a few hundred milliseconds of CPU that holds the GIL; in the
serving process it would stall every other request for that long (in a thread, it still
takes the GIL from the event loop in 5 ms slices). The worker has its own Redis client
and runs the same Store.upload; only the body goes in and the small result comes back.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from ..errors import CouponError, UploadWorkerLost
from ..models import UploadRequest
from ..pool import keyed
from ..pool.keyed import Idempotency
from ..pool.store import Store
from ..results import UploadResult
from ..settings import Settings
from .validation import validate_json

PARENT_CHECK_S = 0.5  # how soon a worker notices its app process has died
# At shutdown, an upload still in the worker has outlived its request's grace period
# (SHUTDOWN_TIMEOUT_S): after this long it is cut, as a crash would cut it (resumable).
STOP_S = 2.0


class UploadWorker:
    """One worker process per app process, started with the app and replaced if it dies."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(1, mp_context=context, initializer=_init, initargs=(self.settings,))

    async def upload(self, body: bytes, idem: Idempotency | None = None) -> UploadResult:
        """Validate ``body`` as an upload and store it; raise its CouponError if it is refused.

        With ``idem``, the body is fingerprinted there too, and the upload runs under the
        key there; whether its answer is a replay is reported to this process's keyed run.
        """
        loop = asyncio.get_running_loop()
        try:
            outcome, replayed = await loop.run_in_executor(self._pool, _upload, body, idem)
        except BrokenProcessPool:
            self._pool = self._start()
            raise UploadWorkerLost(
                "the upload worker stopped; send the upload again (stored coupons come back as duplicates)",
                headers={"Retry-After": "1"},
            ) from None
        keyed.report_replayed(replayed)
        if isinstance(outcome, CouponError):
            raise outcome
        return outcome

    async def close(self, timeout_s: float = STOP_S) -> None:
        """Stop the worker (killed if it has not stopped within ``timeout_s``), and release
        the executor's queues before returning.

        The queues hold five POSIX semaphores, which multiprocessing unlinks when they are
        garbage-collected, or at exit. A service stopped by SIGTERM never gets there: uvicorn,
        once shut down, raises the signal again, and the process dies of it without running
        its exit handlers; the resource tracker then warns of "leaked semaphore objects".
        """
        pool, processes = self._pool, list(self._pool._processes.values())
        stopping = asyncio.ensure_future(asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True))
        if not (await asyncio.wait({stopping}, timeout=timeout_s))[0]:
            for process in processes:
                process.kill()
        await stopping


# In the worker process: one event loop and one store, made by _init.
_loop: asyncio.AbstractEventLoop
_store: Store


def _init(settings: Settings) -> None:
    global _loop, _store
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    _loop = asyncio.new_event_loop()
    _store = Store.from_settings(settings, max_connections=2)


def _exit_with_parent(parent: int) -> None:
    # An app process that is killed (SIGKILL, OOM) cannot stop its worker: without this
    # the worker would live on, orphaned, with its Redis connections, one per restart.
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(1)


def _upload(body: bytes, idem: Idempotency | None) -> tuple[UploadResult | CouponError, bool]:
    try:
        request = validate_json(body, UploadRequest)
        if idem:
            idem.identify(body)
        upload = _store.upload(request.coupons, request.batch, request.max_redemptions)
        outcome = _loop.run_until_complete(_store.keyed(idem, upload))
        return outcome.value, outcome.replayed
    except CouponError as error:
        return error, error.replayed
