"""The store's contract: what every backend (SQLite, PostgreSQL) does, and the task record.

A task is queued, then claimed by a worker with a lease it renews while it works; a worker
whose process died loses its tasks when the lease runs out, and every write a worker makes
requires the lease still held. A task ends once (``finish``). Images are blobs: a row here
(size, type, dimensions), the bytes in the store's ``BlobStore``, linked to the tasks that use
them so that clean-up keeps them while any task does, or an upload that has not expired. A
backend that hears other processes' changes hands them on as task events (``listen``).
HTTP users added at run time and owners' budget overrides are kept here too, and a task can
be stored only if its owner's use allows it, checked in the same transaction
(``Admission``). ``tests/contract/`` checks all of it on every backend.
"""

from __future__ import annotations

import abc
import json
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from tools.media import InputImage
from tools.models import BudgetLimits, ErrorInfo, ImageFailure, ResultImage, Task, TaskStatus
from tools.notifier import TaskEvent
from tools.store.blobs import BlobStore

#: How long a blob stored but not yet linked to a task is protected from clean-up.
ORPHAN_GRACE_S = 3600.0
#: The fields kept as JSON (text in SQLite).
JSON_FIELDS = {"request", "results", "failures", "error", "notes"}
#: The fields ``Store.update`` may change.
WRITABLE = {
    "status",
    "vendor",
    "progress",
    "vendor_task_id",
    "submit_started_at",
    "next_poll_at",
    "polls",
    "notes",
    "started_at",
    "attempts",
}


@dataclass
class TaskRecord:
    """A task as stored, with the fields only the worker needs."""

    seq: int
    id: str
    status: str
    function: str
    vendor: str
    prompt: str
    n: int
    request: dict[str, Any]
    owner: str | None
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    lease_owner: str | None
    lease_until: float
    submit_started_at: float | None
    vendor_task_id: str | None
    next_poll_at: float | None
    polls: int
    progress: str | None
    results: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    error: dict[str, Any] | None
    notes: list[str]
    billed_images: int
    cost: float | None
    currency: str | None
    cancel_requested: int
    idempotency_key: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> TaskRecord:
        """From a database row (anything ``dict`` takes) with its JSON fields as text."""
        data = dict(row)
        for name in JSON_FIELDS:
            if isinstance(data[name], str):
                data[name] = json.loads(data[name])
        return cls(**data)

    @property
    def finished(self) -> bool:
        return TaskStatus(self.status).finished

    def public(self) -> Task:
        def ts(value: float | None) -> datetime | None:
            return datetime.fromtimestamp(value, UTC) if value else None

        return Task(
            id=self.id,
            status=TaskStatus(self.status),
            function=self.function,
            vendor=self.vendor,
            prompt=self.prompt,
            n=self.n,
            input_count=len(self.request.get("images", [])) or 1,
            created_at=ts(self.created_at),  # type: ignore[arg-type]
            updated_at=ts(self.updated_at),  # type: ignore[arg-type]
            started_at=ts(self.started_at),
            finished_at=ts(self.finished_at),
            progress=self.progress,
            attempts=self.attempts,
            vendor_task_id=self.vendor_task_id,
            results=[ResultImage(**r) for r in self.results],
            failures=[ImageFailure(**f) for f in self.failures],
            error=ErrorInfo(**self.error) if self.error else None,
            notes=self.notes,
            billed_images=self.billed_images,
            cost=self.cost,
            currency=self.currency,
        )


@dataclass(frozen=True)
class UploadRecord:
    """An image someone uploaded: whose it is, which blob, and until when it may be used."""

    id: str
    owner: str
    sha256: str
    created_at: float
    expires_at: float


class Turn(NamedTuple):
    """``Store.take_turn``'s answer: the turn's id if it was taken, else how many seconds to
    wait before asking again."""

    id: int | None
    wait: float


@dataclass(frozen=True)
class UserRecord:
    """An HTTP user added at run time: only its token's SHA-256 (hex) is kept."""

    name: str
    token_sha256: str
    created_at: float
    revoked_at: float | None = None


@dataclass(frozen=True)
class Windows:
    """Where the periods an owner's use is counted over begin (Unix times)."""

    hour: float
    day: float
    month: float


@dataclass(frozen=True)
class ActiveTask:
    """A task still queued or running, as much as its estimated cost needs."""

    vendor: str
    function: str
    n: int


@dataclass(frozen=True)
class OwnerUsage:
    """What an owner has used, as the store counts it: the tasks queued or running, the
    tasks asked for since ``Windows.hour`` (and when the first of them was), and what the
    ended tasks asked for since ``Windows.day`` and ``Windows.month`` cost, by currency."""

    active: list[ActiveTask]
    edits: int
    first_edit_at: float | None
    day_cost: dict[str, float]
    month_cost: dict[str, float]


@dataclass(frozen=True)
class Admission:
    """A check of the owner's use that ``create_task`` runs in the transaction that stores
    the task, so that requests arriving together, in any process, are counted one after
    the other: ``check`` raises to refuse (and nothing is stored)."""

    windows: Windows
    check: Callable[[OwnerUsage], None]


@dataclass(frozen=True)
class Claim:
    """A worker that takes a task as ``create_task`` stores it, as ``claim_task`` would:
    the lease's owner and length, and the vendor's slots (``capacity``)."""

    worker: str
    capacity: int
    lease_s: float


@dataclass(frozen=True)
class TaskFilter:
    """Which tasks a page of ``Store.page`` holds; a field left None does not filter.
    ``since``/``until``: the time they were asked for, ``since <= created_at < until``."""

    status: str | None = None
    vendor: str | None = None
    owner: str | None = None
    function: str | None = None
    since: float | None = None
    until: float | None = None


@dataclass(frozen=True)
class TaskSummary:
    """The few fields of a task that statistics need (no request, no results)."""

    seq: int
    vendor: str
    function: str
    owner: str
    status: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    error_code: str | None
    cost: float | None
    currency: str | None
    lease_until: float


@dataclass(frozen=True)
class Tally:
    """The tasks of one (status, vendor, function, currency), as ``Store.tallies`` counts
    them: how many, the images their vendors billed, what they cost (None if none has a
    price) and how many are running with a lease still held (slots in use)."""

    status: str
    vendor: str
    function: str
    currency: str | None
    tasks: int
    images: int
    cost: float | None
    live: int


@dataclass(frozen=True)
class Ended:
    """The tasks that ever ended as ``status`` at ``vendor``, by function and currency, as
    ``Store.ended`` counts them: how many, the images billed and what they cost. Never
    lowered (a task deleted after ``store.retention_days`` stays counted): counters."""

    status: str
    vendor: str
    function: str
    currency: str | None
    tasks: int
    images: int
    cost: float


@dataclass(frozen=True)
class TaskStep:
    """One step of a task's story, as the store's log keeps it (``kind``: queued, claimed,
    released, submitted, poll, retry, rerouted, cancel, downloaded, ended). Most are written by
    the database itself, in the statement that makes the change (queued: the insert;
    claimed, released: the lease; submitted: the vendor's task id; poll: the poll count;
    rerouted: the vendor; cancel: the cancel asked for; downloaded and ended: the end);
    ``Store.add_step`` writes the rest (a retry). Runs of identical polls (and retries) are
    one step with a ``count`` and the time of the last (``last_at``). ``detail`` may hold the
    vendor's task id: operators only, never shown to clients."""

    id: int
    task_id: str
    kind: str
    at: float
    last_at: float
    count: int
    vendor: str | None
    worker: str | None
    code: str | None
    detail: str | None


@dataclass(frozen=True)
class RateWaits:
    """A vendor's rate limit for one kind of call ("submit", "query"), as the store saw it:
    how many calls had to wait for their turn in the last minute and hour (and for how long
    in all that hour), the last such wait, and the turns held now (``Store.take_turn``)."""

    vendor: str
    kind: str
    waits_minute: int
    waits_hour: int
    waited_s_hour: float
    last_wait_at: float | None
    held_now: int
    next_free_at: float | None


@dataclass(frozen=True)
class ConsoleSession:
    """An operator's sign-in to the console: ``id`` is the SHA-256 (hex) of the session's
    secret id (the cookie's), ``operator`` a keyed digest naming the operator token used."""

    id: str
    operator: str
    created_at: float
    expires_at: float
    ended_at: float | None = None


def new_task_id() -> str:
    return uuid.uuid4().hex


#: How long an image being stored counts in its owner's share before a task or an upload
#: links it; a put whose request then failed stops counting after this.
PENDING_S = 120.0


class PendingPuts:
    """Images this process is storing for owners that nothing links yet, so that their
    owner's concurrent requests count them against ``store.owner_share``."""

    def __init__(self) -> None:
        self._puts: dict[str, tuple[str | None, int, float]] = {}

    def add(self, sha256: str, owner: str | None, size: int) -> None:
        self._puts[sha256] = (owner, size, time.monotonic())

    def drop(self, shas: Iterable[str | None]) -> None:
        """Linked (or never stored): no longer pending."""
        for sha in shas:
            self._puts.pop(sha or "", None)

    def bytes_of(self, owner: str) -> int:
        stale = time.monotonic() - PENDING_S
        for sha in [k for k, (_, _, at) in self._puts.items() if at < stale]:
            del self._puts[sha]
        return sum(size for who, size, _ in self._puts.values() if who == owner)


@dataclass(frozen=True)
class StoreLimits:
    """How much the store's images may take (``store.max_results_mb``, ``store.owner_share``).

    ``max_bytes``: all blobs together, counted once each; None: no cap. ``owner_share``: the
    part of it one owner's tasks may use (their inputs and results, a blob shared with
    another owner counting for both); 1: no cap of their own. Tasks stored without an owner
    (trusted callers) have no share.
    """

    max_bytes: int | None = None
    owner_share: float = 1.0

    def share(self) -> int | None:
        """One owner's bytes at most, or None."""
        if self.max_bytes is None or self.owner_share >= 1:
            return None
        return int(self.max_bytes * self.owner_share)


class Store(abc.ABC):
    """Tasks with leases, and the rows of the blobs they use (bytes in ``blobs``)."""

    blobs: BlobStore
    limits: StoreLimits = StoreLimits()

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def listen(self, on_event: Callable[[TaskEvent], None]) -> None:
        """From now until ``close``, hand ``on_event`` every task event of every process
        using this store (this one's included), and ``missed`` when some may have been lost.
        A backend that cannot hear other processes (SQLite) does nothing: its callers' polls
        find their changes."""

    # ---- blobs -------------------------------------------------------------------------

    @abc.abstractmethod
    async def put_blob(
        self, image: InputImage, *, owner: str | None = None, strict: bool = True
    ) -> str:
        """Store an image once (its row and its bytes); return its sha256. Until a task links
        it (``create_task``, ``finish``), clean-up leaves it alone for ORPHAN_GRACE_S.

        Under ``limits``, bytes new to the store must fit as they are written: the oldest
        finished tasks are forgotten to make room (``owner``'s own first when they are over
        their share); when nothing more can go, ``StorageFull`` (``strict``, an input), or
        the image is stored past the cap (a result, already paid for). A write that fails
        leaves neither row nor bytes, and a full disk is ``StorageFull`` naming the store."""

    @abc.abstractmethod
    async def stored_bytes(self, owner: str | None = None) -> int:
        """The bytes of every stored blob, each counted once; of ``owner``'s tasks' blobs
        only, if given."""

    @abc.abstractmethod
    async def read_blob(self, sha256: str) -> InputImage:
        """A stored image, whole; NotFound if it is gone or damaged."""

    @abc.abstractmethod
    async def task_images(self, task_id: str, role: str | None = None) -> dict[str, list[str]]:
        """A task's images by role ("input", "mask", "result"), each list in order."""

    async def task_blobs(self, task_id: str, role: str) -> list[str]:
        return (await self.task_images(task_id, role)).get(role, [])

    @abc.abstractmethod
    async def read_result(
        self, task_id: str, index: int, results: list[dict[str, Any]] | None = None
    ) -> tuple[bytes, str]:
        """A task's result ``index``: its bytes and MIME type; NotFound if there is no such
        result or it was cleaned up or damaged. ``results``: the task's, when the caller
        has just read them."""

    # ---- uploads -----------------------------------------------------------------------

    @abc.abstractmethod
    async def create_upload(
        self, *, owner: str, sha256: str, created_at: float, expires_at: float
    ) -> UploadRecord:
        """Record an upload of a stored blob under a new random id; until ``expires_at``
        the upload keeps the blob from clean-up."""

    @abc.abstractmethod
    async def get_upload(self, upload_id: str, owner: str) -> UploadRecord | None:
        """The owner's upload, expired or not (the caller decides); None if there is none,
        or it is another owner's."""

    # ---- tasks -------------------------------------------------------------------------

    @abc.abstractmethod
    async def create_task(
        self,
        *,
        function: str,
        vendor: str,
        prompt: str,
        n: int,
        request: dict[str, Any],
        inputs: list[str],
        mask: str | None,
        owner: str | None = None,
        notes: list[str] | None = None,
        key: str | None = None,
        created_at: float | None = None,
        admission: Admission | None = None,
        fingerprint: str | None = None,
        keys_since: float | None = None,
        claim: Claim | None = None,
    ) -> TaskRecord:
        """A new queued task using stored blobs. ``created_at``: the time the task was
        asked for (budgets count by it; default now). With ``admission`` (and an
        ``owner``), the owner's use is checked first, in the same transaction.

        With ``key``: the task already made with that key, if any, and then nothing is
        created; but IdempotencyConflict if that task's request had another ``fingerprint``
        (``tools.idempotency.answer``). A key whose task was made before ``keys_since`` has
        expired: it is taken from that task and starts a new one. Calls with one key at
        once, from any number of processes, make one task.

        With ``claim``, a task made by this call is also claimed, exactly as ``claim_task``
        would claim it just after (in the same transaction where the backend can): it comes
        back running under that worker's lease, or queued when it must wait its turn. A
        task found by its key is returned as it is."""

    @abc.abstractmethod
    async def find_by_key(
        self, key: str, *, since: float | None = None, fingerprint: str | None = None
    ) -> TaskRecord | None:
        """The task made with ``key`` (at or after ``since``: an older one's key has
        expired), or None; IdempotencyConflict if its request had another ``fingerprint``."""

    @abc.abstractmethod
    async def expire_keys(self, before: float) -> int:
        """Take their idempotency keys (and their requests' fingerprints) from tasks made
        before ``before``: the keys have expired, each may start a new task. How many."""

    @abc.abstractmethod
    async def get(self, task_id: str, *, owner: str | None = None) -> TaskRecord:
        """The task; NotFound if there is none, or (given ``owner``) if it is another
        owner's: the same error either way, so that an id says nothing about other owners.
        A task stored without an owner is LOCAL_OWNER's, here and in ``list``."""

    @abc.abstractmethod
    async def list(
        self, *, owner: str | None = None, limit: int = 20, unfinished: bool = False
    ) -> list[TaskRecord]:
        """The newest tasks first, of ``owner`` if given, only queued or running ones if
        ``unfinished``."""

    @abc.abstractmethod
    async def page(
        self, where: TaskFilter, *, before: int | None = None, limit: int = 50
    ) -> list[TaskRecord]:
        """The newest tasks matching ``where`` whose ``seq`` is below ``before`` (keyset
        paging: pass the last one's ``seq`` for the next page). An ``owner`` filter of the
        local owner includes the tasks stored without one."""

    @abc.abstractmethod
    async def summaries(self, since: float) -> list[TaskSummary]:
        """Every task asked for at or after ``since``, and every task still queued or
        running, in ``seq`` order (a task stored without an owner is LOCAL_OWNER's)."""

    @abc.abstractmethod
    async def tallies(self, now: float | None = None) -> list[Tally]:
        """Every stored task counted by (status, vendor, function, currency) (what
        ``/metrics`` shows for the whole store, whichever process is asked), read from the
        tallies the store keeps as tasks change (one row a group, not a scan of the tasks).
        ``live`` counts running tasks whose lease holds at ``now`` (an index walk over the
        running tasks)."""

    @abc.abstractmethod
    async def ended(self) -> list[Ended]:
        """Every task that ever ended in this store, by (status, vendor, function,
        currency), kept as tasks end: totals that retention's deletes do not lower."""

    @abc.abstractmethod
    async def active(self, owner: str) -> list[TaskRecord]:
        """``owner``'s tasks still queued or running, newest first."""

    @abc.abstractmethod
    async def usage(self, owner: str, since: float) -> tuple[int, float | None]:
        """How many tasks ``owner`` created at or after ``since``, and when the first was."""

    @abc.abstractmethod
    async def owner_usage(self, owner: str, windows: Windows) -> OwnerUsage:
        """What ``owner`` has used (see ``OwnerUsage``); the local owner's use includes the
        tasks stored without an owner."""

    @abc.abstractmethod
    async def get_many(self, task_ids: Sequence[str]) -> list[TaskRecord]:
        """The tasks among ``task_ids`` that exist, in no particular order."""

    @abc.abstractmethod
    async def find_by_vendor_task(self, vendor: str, vendor_task_id: str) -> TaskRecord | None: ...

    # ---- the worker's calls ------------------------------------------------------------

    @abc.abstractmethod
    async def claim(
        self, vendor: str, worker: str, *, capacity: int, lease_s: float
    ) -> list[TaskRecord]:
        """Take up to ``capacity`` minus the vendor's live tasks (running, lease held by
        anyone): queued ones, or running ones whose lease ran out (their process died).
        Oldest first; each claim counts an attempt."""

    @abc.abstractmethod
    async def claim_task(
        self, task_id: str, worker: str, *, capacity: int, lease_s: float
    ) -> TaskRecord | None:
        """Take one queued task now, as ``claim`` would take it, if ``claim`` would take it
        first: its vendor has a free slot and no older task of that vendor waits. None
        otherwise (it is left for ``claim``)."""

    @abc.abstractmethod
    async def renew(self, worker: str, task_ids: list[str], lease_s: float) -> None:
        """Extend the leases this worker holds to ``lease_s`` from now."""

    @abc.abstractmethod
    async def release(self, worker: str, task_ids: list[str] | None = None) -> None:
        """Hand tasks back at once (a clean stop): another process may take them now."""

    @abc.abstractmethod
    async def update(self, task_id: str, worker: str, **values: Any) -> bool:
        """Change a running task this worker holds (only fields in WRITABLE, else
        ValueError); False if it lost the lease."""

    @abc.abstractmethod
    async def finish(
        self,
        task_id: str,
        worker: str | None,
        status: TaskStatus,
        *,
        results: list[ResultImage] = (),  # type: ignore[assignment]
        failures: list[ImageFailure] = (),  # type: ignore[assignment]
        error: dict[str, Any] | None = None,
        notes: list[str] | None = None,
        billed_images: int = 0,
        cost: float | None = None,
        currency: str | None = None,
        unless_canceled: bool = False,
    ) -> bool:
        """Record a task's end, once, linking its results' blobs; False if it had ended.
        With ``worker`` the lease must still be held; with ``unless_canceled``, not if a
        cancel has been asked for meanwhile."""

    @abc.abstractmethod
    async def reroute(self, task_id: str, worker: str, vendor: str, note: str) -> bool:
        """Queue a held task again for another vendor (a fallback), from the start."""

    @abc.abstractmethod
    async def request_cancel(self, task_id: str) -> TaskRecord:
        """Mark an unfinished task for cancelling (the worker holding it ends it); return
        it. NotFound if there is none."""

    # ---- a task's steps ----------------------------------------------------------------

    @abc.abstractmethod
    async def add_step(
        self,
        task_id: str,
        kind: str,
        *,
        vendor: str | None = None,
        worker: str | None = None,
        code: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Log a step the task's row does not show (a retry, with its error's code and
        message): one statement. A step equal to the task's last one (kind, code, detail)
        counts that one again instead of adding a row. Nothing if the task is gone."""

    @abc.abstractmethod
    async def steps(self, task_id: str, *, limit: int = 500) -> list[TaskStep]:
        """The task's logged steps, oldest first (the first ``limit``); empty for a task
        stored before the log was kept, or none. Deleted with their task."""

    # ---- vendors' rate limits ----------------------------------------------------------

    @abc.abstractmethod
    async def take_turn(
        self, vendor: str, kind: str, rate: float, *, hold_s: float, burst: int = 1
    ) -> Turn:
        """Take a turn for one call of ``kind`` ("submit", "query") to ``vendor``, counted for
        every process on this store (a vendor's limits are per account), or learn how long
        to wait (then nothing is taken). A turn is refused while ``burst`` others were taken
        less than ``burst / rate`` s ago (``burst`` 1: evenly spaced), or while
        ``max(1, floor(rate))`` turns are held. A turn is held until one second after its
        call ends (``end_turn``) or after ``hold_s`` has passed since it was taken, whichever
        is first. All times are the store's one clock.

        So if each call reaches the vendor after its turn was taken and within ``hold_s`` of
        it, no 1 s window at the vendor holds more than ``rate`` calls, however their
        arrivals jitter and whatever the burst (up to ``floor(rate)``): all the calls in one
        window had their turns held at once. (A bucket of ``rate`` tokens, counting turns
        only as they are taken, would let ``2 × rate`` through some windows, enough to trip
        an account's cap.)
        """

    @abc.abstractmethod
    async def end_turn(self, turn_id: int) -> None:
        """The call made on this turn has ended (answered or not)."""

    @abc.abstractmethod
    async def note_wait(self, vendor: str, kind: str, waited_s: float) -> None:
        """A call of ``kind`` to ``vendor`` waited ``waited_s`` for its turn: counted, per
        minute, for ``rate_waits`` (kept a day)."""

    @abc.abstractmethod
    async def rate_waits(self) -> list[RateWaits]:
        """Each vendor and kind of call that waited in the last hour or holds turns now."""

    # ---- the console's sessions --------------------------------------------------------

    @abc.abstractmethod
    async def add_console_session(self, session: ConsoleSession) -> None: ...

    @abc.abstractmethod
    async def console_session(self, session_id: str) -> ConsoleSession | None:
        """The session (ended or expired ones too, until clean-up), or None."""

    @abc.abstractmethod
    async def end_console_session(self, session_id: str, ended_at: float) -> bool:
        """Sign the session out, for every process on the store; False if it was not live."""

    # ---- users and budget overrides ----------------------------------------------------

    @abc.abstractmethod
    async def add_user(self, name: str, token_sha256: str, created_at: float) -> UserRecord | None:
        """Add a user (names are unique, case aside); None if an unrevoked user has that
        name. A revoked user's name may be added again: the new token replaces the old."""

    @abc.abstractmethod
    async def users(self) -> list[UserRecord]:
        """Every user added here, revoked ones too, by name."""

    @abc.abstractmethod
    async def revoke_user(self, name: str, revoked_at: float) -> UserRecord | None:
        """Revoke the unrevoked user of that name (case aside); None if there is none."""

    @abc.abstractmethod
    async def set_budget_override(self, owner: str, limits: BudgetLimits | None) -> None:
        """Set the owner's override of the configured limits; None removes it."""

    @abc.abstractmethod
    async def budget_overrides(self, owner: str | None = None) -> dict[str, BudgetLimits]:
        """Owner → override: every owner's, or only ``owner``'s (if it has one)."""

    # ---- clean-up ----------------------------------------------------------------------

    @abc.abstractmethod
    async def cleanup(self, retention_days: float, max_bytes: int | None = None) -> int:
        """Forget finished tasks past retention (their steps with them), uploads past their
        expiry, console sessions past theirs and rate-limit waits older than a day, then the
        oldest finished tasks while the stored blobs exceed ``max_bytes``; delete blobs no
        task or upload refers to, and what writes cut off by a crash left. Returns how many
        blobs and leftovers were deleted."""
