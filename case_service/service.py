"""The licensing case workflow: apply, preview, confirm or withdraw, retry, decide; SLA.

Statuses and the only moves between them:

    submitted --(evidence fetched)--> evidence-complete | evidence-missing
    evidence-missing --(retry succeeds)--> evidence-complete
    evidence-complete --(citizen confirms)--> in-review
    in-review --(officer decides)--> approved | rejected
    submitted, evidence-*, in-review --(citizen withdraws)--> withdrawn
    submitted, evidence-missing --(the company registration does not name the applicant
                                   as a director)--> refused

Evidence keyed by the juristic id the citizen typed is fetched only after the company
registration (fetched alongside the evidence about herself) names her as a director; a
citizen who is not one gets her application refused and nothing else about that company is
fetched.

Anything else is refused with a ``Conflict`` that says why. Authorisation is decided here,
not in the HTTP layer, so every entry point (routes today, others later) gets the same rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import structlog

from .auth import Actor
from .config import DEFAULT_CASE_TYPE, DIRECTORSHIP, CaseType, Settings
from .hub import EvidenceAnswer, FetchError, HubClient
from .store import CaseRecord, EvidenceRef, Store, iso
from .thaiid import InvalidThaiId, normalise, validate

__all__ = [
    "CLOSED",
    "OPEN",
    "STATUSES",
    "CaseService",
    "Clock",
    "Conflict",
    "Forbidden",
    "Invalid",
    "NotADirector",
    "NotFound",
    "PayloadCache",
    "ServiceError",
    "system_clock",
]

log = structlog.get_logger("case_service")

Clock = Callable[[], datetime]

STATUSES = (
    "submitted",
    "evidence-complete",
    "evidence-missing",
    "in-review",
    "approved",
    "rejected",
    "withdrawn",
    "refused",
)
# Undecided and not withdrawn: the SLA clock runs for these.
OPEN = ("submitted", "evidence-complete", "evidence-missing", "in-review")
CLOSED = ("approved", "rejected", "withdrawn", "refused")
# While evidence is being gathered the status follows the items; after that only people act.
PRE_REVIEW = ("submitted", "evidence-missing", "evidence-complete")
# DIRECTORSHIP (the company registration) says who may act for a juristic id: until it
# names the applicant as a director, no other evidence keyed by that juristic id is fetched
# (its tax clearance, say, is the company's data, not the data of whoever typed its number).
NOT_A_DIRECTOR = "NotADirector"
HELD_BACK = "DirectorshipNotEstablished"
NOT_THE_APPLICANTS = "NotTheApplicants"
DECISIONS = {"approve": "approved", "reject": "rejected"}
MAX_REASON = 2000

# Case numbers carry the Buddhist-era year of submission in Bangkok, not in UTC: an
# application made at 02:00 on 1 January local time belongs to the new year.
BANGKOK = timezone(timedelta(hours=7), "ICT")
SYSTEM_ACTOR = "case-service"
CATALOG_RETRY_SECONDS = 60.0


def _withheld(answer: EvidenceAnswer, code: str, message: str) -> EvidenceAnswer:
    error = FetchError(source="case-service", code=code, message=message)
    return replace(answer, data=None, sha256=None, error=error)


def _ids(rows: object, key: str) -> set[str | None]:
    """The ids under ``key`` in a list of records, read as the registries write them (None
    for a record that has none: it cannot be shown to be anyone's in particular)."""
    if not isinstance(rows, list):
        return set()
    return {normalise(r.get(key)) if isinstance(r, dict) else None for r in rows}


def _entitled(case: CaseRecord, answer: EvidenceAnswer) -> EvidenceAnswer:
    """``answer`` if the applicant may see it; otherwise a failure that shows nothing of it.

    A citizen applies for her own company only: a registration that does not list her as a
    director is not shown (its directors' ids and names are their data, not hers), and it
    refuses the application. Title deeds are asked for by her id; a record of another owner
    in the answer is not hers to see, so the item fails rather than show it.
    """
    if not answer.ok:
        return answer
    data = answer.data if isinstance(answer.data, dict) else {}
    if answer.type == DIRECTORSHIP:
        if case.citizen_id in _ids(data.get("directors"), "citizen_id"):
            return answer
        return _withheld(
            answer,
            NOT_A_DIRECTOR,
            f"the applicant is not a registered director of {case.juristic_id}",
        )
    if answer.type == "title_deed" and not _ids(data.get("records"), "owner_citizen_id") <= {
        case.citizen_id
    }:
        return _withheld(
            answer,
            NOT_THE_APPLICANTS,
            "the land office answered with title deeds of other owners; nothing is shown",
        )
    return answer


def system_clock() -> datetime:
    return datetime.now(UTC)


class ServiceError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        # Extra fields of the JSON error body (never personal data: it is not logged, but
        # it is shown to whoever made the request).
        self.details: dict[str, Any] = {}


class Invalid(ServiceError):
    status = 400
    code = "invalid-request"


class Forbidden(ServiceError):
    status = 403
    code = "forbidden"


class NotADirector(Forbidden):
    """The application is refused: the registry does not name the applicant as a director.

    The case stays on record (status ``refused``) because exchanges were made for it."""

    code = "not-a-director"

    def __init__(self, message: str, case_no: str) -> None:
        super().__init__(message)
        self.details = {"case_no": case_no}


class NotFound(ServiceError):
    status = 404
    code = "not-found"


class Conflict(ServiceError):
    status = 409
    code = "illegal-transition"


@dataclass(frozen=True)
class Cached:
    sha256: str
    data: Any


class PayloadCache:
    """Evidence payloads in memory only, least recently used out first.

    This is the only place a document lives in the case service, and only to show it; the
    bound keeps the amount of personal data held at any moment small and predictable.
    """

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._items: OrderedDict[tuple[str, str], Cached] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple[str, str]) -> Cached | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: tuple[str, str], value: Cached) -> None:
        if self._max <= 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._max:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()

    def drop_case(self, case_no: str) -> None:
        for key in [k for k in self._items if k[0] == case_no]:
            del self._items[key]


class CaseService:
    """The case workflow over a ``Store`` and a ``HubClient``; every method takes the actor."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        hub: HubClient,
        *,
        clock: Clock = system_clock,
    ) -> None:
        self._settings = settings
        self._store = store
        self._hub = hub
        self._clock = clock
        self.cache = PayloadCache(settings.cache_entries)
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._catalog: dict[str, dict[str, Any]] | None = None
        self._catalog_retry_at = 0.0

    # --- helpers ------------------------------------------------------------------------

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise RuntimeError("the clock must return timezone-aware datetimes")
        return now

    @contextlib.asynccontextmanager
    async def _case_lock(self, case_no: str) -> AsyncIterator[None]:
        """Serialise changes to one case (fetch, retry, transitions); other cases run freely.

        Locks are reference-counted and dropped when unused, so their number stays bounded by
        the requests in flight rather than growing with every case ever touched.
        """
        lock, users = self._locks.setdefault(case_no, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[case_no]

    def _user_id(self, actor: Actor) -> str:
        # X-Road userIds of persons are country-prefixed personal codes (TH + citizen id);
        # officers are named by their staff id as the identity provider gives it.
        if actor.role == "citizen":
            return f"{self._settings.user_id_prefix}{actor.sub}"
        return actor.sub

    def _case_type(self, code: str) -> CaseType:
        ct = self._settings.case_types.get(code)
        if ct is None:
            raise RuntimeError(f"case type {code!r} is no longer configured")
        return ct

    async def _visible_case(self, actor: Actor, case_no: str) -> CaseRecord:
        """The case if ``actor`` may see it; NotFound otherwise (also for others' cases)."""
        case = await self._store.get_case(case_no)
        # A citizen asking for someone else's case learns nothing, not even that it exists.
        if case is None or (actor.role != "officer" and case.citizen_id != actor.sub):
            raise NotFound(f"no case {case_no}")
        return case

    async def _own_case(self, actor: Actor, case_no: str, action: str) -> CaseRecord:
        case = await self._visible_case(actor, case_no)
        if actor.role != "citizen":
            raise Forbidden(f"only the applicant can {action} a case")
        return case

    async def catalog_titles(self) -> dict[str, dict[str, Any]]:
        """The node's evidence catalog by type; empty (and asked again later) when unreachable.

        Titles only decorate the preview, so a catalog outage must not block applications.
        """
        if self._catalog is None:
            # While the node is down, ask at most once a minute: every preview would otherwise
            # wait for one more failing request before the evidence itself is fetched.
            if time.monotonic() < self._catalog_retry_at:
                return {}
            try:
                types = await self._hub.catalog()
            except Exception as exc:  # any failure: show plain type names instead
                self._catalog_retry_at = time.monotonic() + CATALOG_RETRY_SECONDS
                log.warning("evidence.catalog_unavailable", error=str(exc) or type(exc).__name__)
                return {}
            self._catalog = {t["type"]: t for t in types}
        return self._catalog

    # --- evidence -----------------------------------------------------------------------

    async def _fetch(
        self, case: CaseRecord, ref: EvidenceRef, actor: Actor, reason: str
    ) -> EvidenceAnswer:
        """One exchange through the hub, logged in the case's exchange table.

        ``reason`` is apply, retry or view; only apply and retry replace the item's reference.
        """
        ct = self._case_type(case.case_type)
        answer = await self._hub.fetch(
            ref.type,
            ref.subject_id,
            user_id=self._user_id(actor),
            issue=case.case_no,
            purpose=ct.purpose,
            legal_basis=ct.legal_basis,
        )
        at = self._now()
        answer = _entitled(case, answer)
        if answer.ok and answer.sha256 is not None:
            self.cache.put((case.case_no, ref.type), Cached(answer.sha256, answer.data))
        reference = None
        if reason != "view":
            reference = {
                "status": "ok" if answer.ok else "failed",
                "service": answer.service,
                "error": answer.error.as_dict() if answer.error else None,
            }
        await self._store.record_fetch(
            case.case_no,
            ref.type,
            at=at,
            message_id=answer.message_id,
            user_id=self._user_id(actor),
            reason=reason,
            ok=answer.ok,
            status=answer.error.status if answer.error else 200,
            error_code=answer.error.code if answer.error else None,
            sha256=answer.sha256,
            reference=reference,
        )
        log.info(
            "evidence.fetched",
            case_no=case.case_no,
            type=ref.type,
            reason=reason,
            message_id=answer.message_id,
            ok=answer.ok,
            error_source=answer.error.source if answer.error else None,
            error_code=answer.error.code if answer.error else None,
            status=answer.error.status if answer.error else None,
        )
        return answer

    async def _fetch_all(
        self, case: CaseRecord, refs: Sequence[EvidenceRef], actor: Actor, reason: str
    ) -> list[EvidenceAnswer]:
        # All at once: the slowest registry sets the wait, not the sum of all of them. A
        # failed fetch is a value, not an exception, so one failure cancels nothing.
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(self._fetch(case, ref, actor, reason)) for ref in refs]
        return [t.result() for t in tasks]

    async def _gather(
        self, case: CaseRecord, refs: Sequence[EvidenceRef], actor: Actor, reason: str
    ) -> dict[str, EvidenceAnswer]:
        """Fetch ``refs``; directorship first for anything keyed by the juristic id.

        Evidence about the applicant herself (her citizen id, which she signed in with) and
        the company registration go out at once. Other evidence keyed by the juristic id
        waits for that registration to name her as a director (or, when it is not in this
        batch, for the case's stored registration to have done so); otherwise it is not
        fetched at all and the item says why.
        """
        gate = next((r for r in refs if r.type == DIRECTORSHIP), None)
        held = [r for r in refs if r.subject_kind == "juristic_id" and r is not gate]
        free = [r for r in refs if r.subject_kind != "juristic_id"]

        async def gated() -> list[EvidenceAnswer]:
            answers: list[EvidenceAnswer] = []
            established = False
            if gate is not None:
                answers.append(await self._fetch(case, gate, actor, reason))
                established = answers[0].ok
            elif held:
                stored = await self._store.evidence(case.case_no)
                established = any(r.type == DIRECTORSHIP and r.status == "ok" for r in stored)
            if not held:
                return answers
            if not established:
                error = answers[0].error if answers else None
                refused = error is not None and error.code == NOT_A_DIRECTOR
                return answers + [await self._hold(case, r, reason, refused) for r in held]
            return answers + await self._fetch_all(case, held, actor, reason)

        # A failed fetch is a value, not an exception, so one failure cancels nothing.
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(self._fetch(case, ref, actor, reason)) for ref in free]
            after_gate = tg.create_task(gated())
        return {a.type: a for a in [t.result() for t in tasks] + after_gate.result()}

    async def _hold(
        self, case: CaseRecord, ref: EvidenceRef, reason: str, refused: bool
    ) -> EvidenceAnswer:
        """An item keyed by the juristic id that is not fetched: no directorship (yet)."""
        if refused:
            message = (
                f"not fetched: the applicant is not a registered director of {case.juristic_id}"
            )
        else:
            message = (
                f"not fetched: evidence about {case.juristic_id} is fetched only once the "
                f"company registration names the applicant as a director; retry {DIRECTORSHIP}"
            )
        error = FetchError(source="case-service", code=HELD_BACK, message=message)
        if reason != "view":
            await self._store.not_fetched(case.case_no, ref.type, error.as_dict())
        log.info("evidence.held", case_no=case.case_no, type=ref.type, reason=reason)
        return EvidenceAnswer(ref.type, "", error=error)

    async def _recompute(self, case_no: str) -> None:
        """Set evidence-complete or evidence-missing from the items (before review only)."""
        case = await self._store.get_case(case_no)
        if case is None or case.status not in PRE_REVIEW:
            return
        refs = await self._store.evidence(case_no)
        missing = [r.type for r in refs if r.status != "ok"]
        target = "evidence-missing" if missing else "evidence-complete"
        note = f"missing: {', '.join(missing)}" if missing else f"all {len(refs)} items retrieved"
        for ref in refs:
            if ref.type == DIRECTORSHIP and (ref.error or {}).get("code") == NOT_A_DIRECTOR:
                target, note = "refused", str((ref.error or {}).get("message"))
        if target == case.status:
            return
        if target == "refused":
            # Closed without a purpose to show anything: drop the documents held for it.
            self.cache.drop_case(case_no)
        await self._store.transition(
            case_no,
            allowed_from=[case.status],
            to=target,
            at=self._now(),
            actor=SYSTEM_ACTOR,
            note=note,
        )
        log.info("case.status", case_no=case_no, status=target, by=SYSTEM_ACTOR)

    async def recover(self) -> None:
        """After a restart: fetches cut off mid-way become failures the citizen can retry."""
        stuck = await self._store.fail_pending(
            {
                "source": "case-service",
                "status": None,
                "code": None,
                "message": "the fetch was interrupted by a restart of the case service; retry",
                "detail": None,
                "body_excerpt": None,
            }
        )
        for case_no in stuck:
            await self._recompute(case_no)
        if stuck:
            log.warning("case.recovered", cases=stuck)

    # --- workflow -----------------------------------------------------------------------

    async def apply(
        self,
        actor: Actor,
        *,
        citizen_id: object,
        juristic_id: object,
        case_type: object = None,
    ) -> dict[str, Any]:
        """A citizen's application: create the case, fetch every evidence item, preview."""
        if actor.role != "citizen":
            raise Forbidden("only citizens apply; officers act on existing cases")
        code = DEFAULT_CASE_TYPE if case_type is None else case_type
        if not isinstance(code, str) or code not in self._settings.case_types:
            known = ", ".join(sorted(self._settings.case_types))
            raise Invalid(f"unknown case_type {code!r}; known: {known}")
        ct = self._settings.case_types[code]
        try:
            cid = validate(citizen_id, "citizen_id")
            jid = validate(juristic_id, "juristic_id")
        except InvalidThaiId as exc:
            raise Invalid(str(exc)) from exc
        if cid != actor.sub:
            # The citizen acts for herself; applying under another id would read that
            # person's registry records on her say-so.
            raise Forbidden("citizen_id must be your own (the id you signed in with)")
        now = self._now()
        subjects = {"citizen_id": cid, "juristic_id": jid}
        case_no = await self._store.create_case(
            agency=self._settings.agency_prefix,
            prefix=ct.number_prefix,
            year_be=now.astimezone(BANGKOK).year + 543,
            case_type=ct.code,
            citizen_id=cid,
            juristic_id=jid,
            submitted_at=now,
            due_at=now + timedelta(days=ct.sla_days),
            sla_days=ct.sla_days,
            evidence=[(n.type, n.subject, subjects[n.subject]) for n in ct.evidence],
            actor=actor.sub,
        )
        log.info("case.submitted", case_no=case_no, case_type=ct.code, by=actor.loggable)
        async with self._case_lock(case_no):
            case = await self._store.get_case(case_no)
            assert case is not None
            await self._gather(case, await self._store.evidence(case_no), actor, "apply")
            await self._recompute(case_no)
            case = await self._store.get_case(case_no)
            assert case is not None
        if case.status == "refused":
            raise NotADirector(
                f"application refused: the company registry (DBD) does not list you as a "
                f"director of {jid}, so you cannot apply for it and nothing else about it was "
                f"fetched; apply with the juristic id of a company you direct (case {case_no} "
                "is kept, closed as refused)",
                case_no,
            )
        return await self.get(actor, case_no)

    async def get(self, actor: Actor, case_no: str, *, payload: bool = True) -> dict[str, Any]:
        """The case with history, exchanges and evidence; payloads from the cache or the hub.

        A payload not in the cache is fetched again (a new exchange, on behalf of the viewer)
        and checked against the digest stored when the case was built. ``payload=False``
        shows references only and makes no exchange.
        """
        case = await self._visible_case(actor, case_no)
        refs = await self._store.evidence(case_no)
        shown: dict[str, tuple[Cached | None, dict[str, Any] | None, str | None]] = {}
        refetch: list[EvidenceRef] = []
        for ref in refs:
            if ref.status != "ok" or not payload:
                continue
            cached = self.cache.get((case_no, ref.type))
            if cached is not None:
                shown[ref.type] = (cached, None, "cache")
            # Only an open case has a purpose that justifies reading the registries again; a
            # decided or withdrawn case shows its references.
            elif case.status in OPEN:
                refetch.append(ref)
        if refetch:
            answers = await self._gather(case, refetch, actor, "view")
            for ref in refetch:
                answer = answers[ref.type]
                if answer.ok and answer.sha256 is not None:
                    shown[ref.type] = (Cached(answer.sha256, answer.data), None, "hub")
                else:
                    error = answer.error.as_dict() if answer.error else None
                    shown[ref.type] = (None, error, None)
        titles = await self.catalog_titles() if refs else {}
        items = [self._item_view(ref, shown.get(ref.type), titles) for ref in refs]
        view = self._summary(case)
        view["history"] = [
            {"status": h.status, "at": iso(h.at), "by": h.actor, "note": h.note}
            for h in await self._store.history(case_no)
        ]
        view["evidence"] = items
        view["exchanges"] = await self._store.exchanges(case_no)
        return view

    def _item_view(
        self,
        ref: EvidenceRef,
        shown: tuple[Cached | None, dict[str, Any] | None, str | None] | None,
        titles: dict[str, dict[str, Any]],
    ) -> dict[str, Any]:
        entry = titles.get(ref.type, {})
        cached, view_error, source = shown if shown else (None, None, None)
        changed = cached is not None and cached.sha256 != ref.sha256
        notice = None
        if changed and ref.retrieved_at is not None:
            notice = (
                f"evidence changed since {iso(ref.retrieved_at)}: the registry now holds a "
                "different document than the one this case was built on"
            )
        return {
            "type": ref.type,
            "title": entry.get("title") or ref.type.replace("_", " ").capitalize(),
            "subject": ref.subject_kind,
            "subject_id": ref.subject_id,
            "status": ref.status,
            "attempts": ref.attempts,
            "message_id": ref.message_id,
            "service": ref.service or entry.get("service"),
            "retrieved_at": iso(ref.retrieved_at) if ref.retrieved_at else None,
            "sha256": ref.sha256,
            "error": ref.error,
            "data": cached.data if cached else None,
            "data_source": source,
            "changed_since": changed,
            "notice": notice,
            "view_error": view_error,
        }

    def _summary(self, case: CaseRecord) -> dict[str, Any]:
        now = self._now()
        ct = self._settings.case_types.get(case.case_type)
        return {
            "case_no": case.case_no,
            "case_type": case.case_type,
            "title": ct.title if ct else case.case_type,
            "citizen_id": case.citizen_id,
            "juristic_id": case.juristic_id,
            "status": case.status,
            "submitted_at": iso(case.submitted_at),
            "updated_at": iso(case.updated_at),
            "sla_days": case.sla_days,
            "due_at": iso(case.due_at),
            "overdue": case.status in OPEN and now > case.due_at,
            "decision": (
                {
                    "decision": case.decision,
                    "reason": case.decision_reason,
                    "by": case.decided_by,
                    "at": iso(case.decided_at),
                }
                if case.decision and case.decided_at
                else None
            ),
        }

    async def list_cases(
        self,
        actor: Actor,
        *,
        statuses: Sequence[str] = (),
        case_type: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Citizens: their own cases. Officers: all cases, filtered."""
        if unknown := [s for s in statuses if s not in STATUSES]:
            raise Invalid(f"unknown status {unknown[0]!r}; known: {', '.join(STATUSES)}")
        if not 1 <= limit <= 1000 or offset < 0:
            raise Invalid("limit must be 1..1000 and offset >= 0")
        if actor.role not in ("citizen", "officer"):
            raise Forbidden("no access")
        cases = await self._store.list_cases(
            citizen_id=actor.sub if actor.role == "citizen" else None,
            statuses=statuses,
            case_type=case_type,
            limit=limit,
            offset=offset,
        )
        return [self._summary(c) for c in cases]

    async def _move(
        self,
        actor: Actor,
        case: CaseRecord,
        *,
        action: str,
        allowed_from: Sequence[str],
        to: str,
        note: str | None = None,
        decision: tuple[str, str | None] | None = None,
        explain: str | None = None,
    ) -> None:
        async with self._case_lock(case.case_no):
            current = await self._store.get_case(case.case_no)
            assert current is not None
            if current.status not in allowed_from:
                reason = explain or f"only a case that is {' or '.join(allowed_from)} can be"
                raise Conflict(
                    f"cannot {action} case {case.case_no}: it is {current.status}; {reason}"
                )
            if not await self._store.transition(
                case.case_no,
                allowed_from=allowed_from,
                to=to,
                at=self._now(),
                actor=actor.sub,
                note=note,
                decision=decision,
            ):
                raise Conflict(f"cannot {action} case {case.case_no}: its status just changed")
        log.info("case.status", case_no=case.case_no, status=to, by=actor.loggable, action=action)

    async def confirm(self, actor: Actor, case_no: str) -> dict[str, Any]:
        """The citizen has seen the evidence and sends the case to an officer."""
        case = await self._own_case(actor, case_no, "confirm")
        explain = "only a case whose evidence is complete can be sent for review"
        if case.status == "evidence-missing":
            refs = await self._store.evidence(case_no)
            missing = ", ".join(r.type for r in refs if r.status != "ok")
            explain = f"evidence is missing ({missing}); retry the failed items first"
        await self._move(
            actor,
            case,
            action="confirm",
            allowed_from=["evidence-complete"],
            to="in-review",
            explain=explain,
        )
        return await self.get(actor, case_no, payload=False)

    async def withdraw(self, actor: Actor, case_no: str, reason: object = None) -> dict[str, Any]:
        """The citizen takes her application back, at any time before a decision."""
        case = await self._own_case(actor, case_no, "withdraw")
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
            raise Invalid(f"reason must be a string of at most {MAX_REASON} characters")
        note = reason.strip() if isinstance(reason, str) else ""
        await self._move(
            actor,
            case,
            action="withdraw",
            allowed_from=OPEN,
            to="withdrawn",
            note=note or None,
            explain="a decided or withdrawn case cannot be withdrawn",
        )
        # Nothing will be shown for this case again without a purpose: drop held documents.
        self.cache.drop_case(case_no)
        return await self.get(actor, case_no, payload=False)

    async def retry(self, actor: Actor, case_no: str, evidence_type: str) -> dict[str, Any]:
        """Fetch one failed item again (citizen or officer) and recompute the status."""
        case = await self._visible_case(actor, case_no)
        async with self._case_lock(case_no):
            current = await self._store.get_case(case_no)
            assert current is not None
            ref = next(
                (r for r in await self._store.evidence(case_no) if r.type == evidence_type), None
            )
            if ref is None:
                raise NotFound(f"case {case_no} has no evidence item {evidence_type!r}")
            if current.status != "evidence-missing":
                raise Conflict(
                    f"cannot retry evidence of case {case_no}: it is {current.status}; only "
                    "items of a case with missing evidence (before review) can be retried"
                )
            if ref.status == "ok":
                raise Conflict(
                    f"evidence {evidence_type} of case {case_no} was retrieved successfully; "
                    "there is nothing to retry"
                )
            refs = await self._store.evidence(case_no)
            batch = [ref]
            if ref.type == DIRECTORSHIP:
                # What waited for the directorship check goes out once it passes.
                batch += [r for r in refs if (r.error or {}).get("code") == HELD_BACK]
            elif ref.subject_kind == "juristic_id" and not any(
                r.type == DIRECTORSHIP and r.status == "ok" for r in refs
            ):
                raise Conflict(
                    f"cannot retry {evidence_type} of case {case_no} yet: evidence about the "
                    "company is fetched only once its registration names the applicant as a "
                    f"director; retry {DIRECTORSHIP} first"
                )
            await self._gather(case, batch, actor, "retry")
            await self._recompute(case_no)
        return await self.get(actor, case_no)

    async def decide(
        self, actor: Actor, case_no: str, *, decision: object, reason: object = None
    ) -> dict[str, Any]:
        """An officer approves or rejects an in-review case; a rejection must say why."""
        if actor.role != "officer":
            # Checked before visibility so a citizen gets the same answer for any number.
            raise Forbidden("only officers decide cases")
        case = await self._visible_case(actor, case_no)
        if decision not in DECISIONS:
            raise Invalid("decision must be 'approve' or 'reject'")
        if reason is not None and not isinstance(reason, str):
            raise Invalid("reason must be a string")
        text = (reason or "").strip()
        if decision == "reject" and not text:
            raise Invalid("a rejection needs a reason the citizen can act on")
        if len(text) > MAX_REASON:
            raise Invalid(f"reason is longer than {MAX_REASON} characters")
        await self._move(
            actor,
            case,
            action=str(decision),
            allowed_from=["in-review"],
            to=DECISIONS[str(decision)],
            note=text or None,
            decision=(DECISIONS[str(decision)], text or None),
            explain="only a case in review (confirmed by the applicant) can be decided",
        )
        return await self.get(actor, case_no, payload=False)

    # --- SLA ----------------------------------------------------------------------------

    def _officer(self, actor: Actor) -> None:
        if actor.role != "officer":
            raise Forbidden("officers only")

    async def overdue(self, actor: Actor) -> list[dict[str, Any]]:
        """Undecided, not withdrawn cases past their due date, most overdue first."""
        self._officer(actor)
        now = self._now()
        result = []
        for case in await self._store.overdue(now, OPEN):
            item = self._summary(case)
            item["days_overdue"] = round((now - case.due_at) / timedelta(days=1), 2)
            result.append(item)
        return result

    async def stats(self, actor: Actor, case_type: str | None = None) -> dict[str, Any]:
        """Time from submission to decision over decided cases, and the share within SLA.

        p90 uses the nearest-rank method (an actual observed value, no interpolation), which
        is what a "90 % of cases were decided within N days" statement means.
        """
        self._officer(actor)
        if case_type is not None and case_type not in self._settings.case_types:
            raise Invalid(f"unknown case_type {case_type!r}")
        now = self._now()
        decided = await self._store.decided(case_type)
        days = sorted(
            (c.decided_at - c.submitted_at) / timedelta(days=1)
            for c in decided
            if c.decided_at is not None
        )
        within = sum(1 for c in decided if c.decided_at is not None and c.decided_at <= c.due_at)
        n = len(days)
        counts = await self._store.count_by_status(case_type)
        overdue = [
            c for c in await self._store.overdue(now, OPEN) if case_type in (None, c.case_type)
        ]
        return {
            "as_of": iso(now),
            "case_type": case_type,
            "decided": n,
            "approved": sum(1 for c in decided if c.decision == "approved"),
            "rejected": sum(1 for c in decided if c.decision == "rejected"),
            "mean_days": round(statistics.fmean(days), 3) if n else None,
            "median_days": round(statistics.median(days), 3) if n else None,
            "p90_days": round(days[math.ceil(0.9 * n) - 1], 3) if n else None,
            "within_sla": within,
            "within_sla_share": round(within / n, 4) if n else None,
            "open": sum(counts.get(s, 0) for s in OPEN),
            "overdue": len(overdue),
            "by_status": {s: counts.get(s, 0) for s in STATUSES},
        }
