"""Incoming integrations: bank statements from finance, delivery progress from the ERP.

Both take a batch and answer one result per line: ``applied``, ``duplicate`` (already recorded;
nothing changed), ``unmatched`` (no contract could be identified) or ``rejected`` (a contract was
found but refused the line; ``reason`` says why).  One bad line never fails the batch: every
line is judged on its own and every line gets an outcome.

Writes go through :class:`api.service.ContractService`, i.e. through the contract workflow's
validated updates, which is where idempotency lives:

* a bank line is recorded as the payment reference ``bank:<line_id>``; the workflow records a
  reference once, so the same line posted twice (in one batch or in a later one) is applied once
  and reported ``duplicate`` the second time; the same line id with another amount is refused;
* an ERP progress report equal to the one already recorded changes nothing (``changed: false``)
  and is reported ``duplicate``; so is a completion of a milestone already done.

Lines for one contract run one after another in request order (payment allocation depends on
it); different contracts run concurrently, at most ``concurrency`` at a time.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.contracts import schemas
from api.contracts.service import FINAL, ContractService
from api.integrations import schemas as s
from api.platform.fields import MAX_YEAR, MIN_YEAR, SUPPORTED_DATES, not_plain_decimal, received_too_late
from api.platform.problems import Problem
from models import Contract, Payment
from workflows.contract import MAX_PAYMENTS_PER_BATCH

log = logging.getLogger("api.integrations")

BANK_REFERENCE_PREFIX = "bank:"
ERP_ACTOR = "erp"
DEFAULT_CONCURRENCY = 16
Result = TypeVar("Result", s.BankLineResult, s.ErpLineResult)
_IN_CHUNK = 500  # parameters per IN (...) query: far below SQLite's and PostgreSQL's limits

# A contract number or id inside free text: a run of ASCII letters, digits and - _ . / (so
# "货款HT-2026-0001，谢谢" yields "HT-2026-0001"), trimmed of leading/trailing punctuation.  A
# run containing '/' also yields its pieces ("HT-1001/INV-77" -> HT-1001, INV-77).
_RUN = re.compile(r"[A-Za-z0-9_./-]+")
MIN_TOKEN = 4


def reference_tokens(text: str | None) -> list[str]:
    """The candidate contract numbers / ids in a bank reference (see docs/integrations.md)."""
    if not text:
        return []
    seen: dict[str, None] = {}
    for run in _RUN.findall(text):
        pieces = [run] + (run.split("/") if "/" in run else [])
        for piece in pieces:
            token = piece.strip("_./-")
            if len(token) >= MIN_TOKEN:
                seen.setdefault(token, None)
    return list(seen)


def bank_reference(line_id: str) -> str:
    return f"{BANK_REFERENCE_PREFIX}{line_id}"


@dataclass(frozen=True)
class _Row:
    id: str
    external_id: str | None
    erp_order_no: str | None
    status: str


def _provisional(result: Result | None) -> Result:
    """A line's result set while matching ("not processed" until applied): every line sent on has one."""
    assert result is not None
    return result


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start : start + _IN_CHUNK]


def _rows(session: Session, *conditions) -> list[_Row]:
    query = select(Contract.id, Contract.external_id, Contract.erp_order_no, Contract.status).where(*conditions)
    return [_Row(*r) for r in session.execute(query).all()]


class _Index:
    """Contracts by id and by contract number (external_id), exact and case-insensitive."""

    def __init__(self) -> None:
        self.by_id: dict[str, _Row] = {}
        self.by_number: dict[str, _Row] = {}
        self.by_number_ci: dict[str, dict[str, _Row]] = defaultdict(dict)

    def add(self, row: _Row) -> None:
        self.by_id[row.id] = row
        if row.external_id:
            self.by_number[row.external_id] = row
            self.by_number_ci[row.external_id.casefold()][row.id] = row

    def number(self, text: str) -> tuple[_Row | None, list[_Row]]:
        """(the contract, []) or (None, the candidates when a case-insensitive match is ambiguous)."""
        exact = self.by_number.get(text)
        if exact is not None:
            return exact, []
        candidates = list(self.by_number_ci.get(text.casefold(), {}).values())
        if len(candidates) == 1:
            return candidates[0], []
        return None, candidates

    def token(self, token: str) -> list[_Row]:
        found: dict[str, _Row] = {}
        row, ambiguous = self.number(token)
        for r in ([row] if row else []) + ambiguous:
            found[r.id] = r
        by_id = self.by_id.get(token.lower())
        if by_id is not None:
            found[by_id.id] = by_id
        return list(found.values())


class IntegrationService:
    def __init__(self, contracts: ContractService, *, concurrency: int = DEFAULT_CONCURRENCY) -> None:
        self.contracts = contracts
        self.sessions = contracts.sessions
        self.concurrency = concurrency

    # ================================================================== finance
    async def finance_payments(self, body: s.FinancePaymentsIn, actor: str | None = None) -> s.FinancePaymentsOut:
        _check_size(len(body.lines))
        lines = body.lines
        index, recorded = await asyncio.to_thread(self._finance_lookup, lines)
        results: list[s.BankLineResult | None] = [None] * len(lines)
        groups: dict[str, list[int]] = defaultdict(list)
        claimed: dict[str, str] = {}  # line_id -> the contract an earlier line of this batch went to
        for i, line in enumerate(lines):
            row, how, outcome, why = self._match_bank_line(line, index)
            malformed = not_plain_decimal(line.amount)
            if row is not None and malformed:
                row, outcome, why = None, "rejected", f"amount: {malformed}"
            elif row is not None and not MIN_YEAR <= line.received_at.year <= MAX_YEAR:
                # A line is judged on its own: one mistyped date does not fail the statement.
                row, outcome, why = None, "rejected", (f"received_at {line.received_at.isoformat()} is outside the "
                                                       f"supported dates ({SUPPORTED_DATES})")
            elif row is not None and received_too_late(line.received_at):
                row, outcome, why = None, "rejected", received_too_late(line.received_at)
            if row is None:
                results[i] = s.BankLineResult(line_id=line.line_id, index=i, outcome=outcome, reason=why)
                continue
            ref = bank_reference(line.line_id)
            prior = recorded.get(ref, {})
            elsewhere = sorted(set(prior) - {row.id})
            earlier = claimed.setdefault(line.line_id, row.id)
            if elsewhere or earlier != row.id:
                other = elsewhere[0] if elsewhere else earlier
                results[i] = s.BankLineResult(
                    line_id=line.line_id, index=i, outcome="rejected", contract_id=row.id, matched_by=how,
                    reason=f"bank line {line.line_id!r} is already applied to contract {other}; a bank line pays "
                    f"one contract only",
                )
                continue
            if row.id in prior and _same_payment(prior[row.id], line):
                # Recorded payments are never removed, so the read model holding this very payment
                # is proof enough: a re-posted statement costs no workflow update.
                results[i] = s.BankLineResult(
                    line_id=line.line_id, index=i, outcome="duplicate", contract_id=row.id, matched_by=how,
                    reason=f"reference {ref!r} was already recorded",
                )
                continue
            results[i] = s.BankLineResult(line_id=line.line_id, index=i, outcome="rejected", contract_id=row.id,
                                          matched_by=how, reason="not processed")
            groups[row.id].append(i)

        # Who posted the statement (the finance feed's key, or a finance person): the audit trail and
        # the workflow's payment events name the same caller.
        by = actor or (f"bank-statement:{body.statement_id}"[:100] if body.statement_id else "bank-statement")

        async def apply(indexes: list[int]) -> None:
            # One workflow update per contract (and per MAX_PAYMENTS_PER_BATCH lines), in order.
            for start in range(0, len(indexes), MAX_PAYMENTS_PER_BATCH):
                chunk = indexes[start : start + MAX_PAYMENTS_PER_BATCH]
                done = await self._apply_bank_lines([lines[i] for i in chunk], [_provisional(results[i]) for i in chunk],
                                                    by)
                for i, result in zip(chunk, done, strict=True):
                    results[i] = result

        await self._run_contract_groups(groups, apply)
        final = [r for r in results if r is not None]
        return s.FinancePaymentsOut(statement_id=body.statement_id, totals=_totals(final), lines=final)

    def _finance_lookup(
        self, lines: Sequence[s.BankLineIn]
    ) -> tuple[_Index, dict[str, dict[str, tuple[Decimal, str]]]]:
        """Contracts the lines may name, and the payments already recorded under the lines'
        references: reference -> contract id -> (amount, currency)."""
        ids: set[str] = set()
        numbers: set[str] = set()
        for line in lines:
            if line.contract_id:
                ids.add(line.contract_id)
            if line.contract_number:
                numbers.add(line.contract_number)
            if not line.contract_id and not line.contract_number:
                for token in reference_tokens(line.reference):
                    numbers.add(token)
                    ids.add(token.lower())
        index = _Index()
        recorded: dict[str, dict[str, tuple[Decimal, str]]] = defaultdict(dict)
        refs = sorted({bank_reference(line.line_id) for line in lines})
        with self.sessions() as session:
            for chunk in _chunks(sorted(ids)):
                for row in _rows(session, Contract.id.in_(chunk)):
                    index.add(row)
            for chunk in _chunks(sorted({n.casefold() for n in numbers})):
                # lower() covers ASCII contract numbers case-insensitively; casefold() is re-applied in Python.
                for row in _rows(session, func.lower(Contract.external_id).in_(chunk)):
                    index.add(row)
            for chunk in _chunks(sorted(numbers)):
                for row in _rows(session, Contract.external_id.in_(chunk)):
                    index.add(row)
            for chunk in _chunks(refs):
                for cid, ref, amount, currency in session.execute(
                    select(Payment.contract_id, Payment.reference, Payment.amount, Payment.currency).where(
                        Payment.reference.in_(chunk)
                    )
                ).all():
                    recorded[ref][cid] = (Decimal(amount), currency)
        return index, recorded

    @staticmethod
    def _match_bank_line(line: s.BankLineIn, index: _Index) -> tuple[_Row | None, str | None, str, str | None]:
        """(contract, how it matched, outcome if not matched, why not)."""
        if line.contract_id:
            row = index.by_id.get(line.contract_id)
            if row is None:
                return None, None, "unmatched", f"no contract with id {line.contract_id!r}"
            if line.contract_number:
                other, _ = index.number(line.contract_number)
                if other is not None and other.id != row.id:
                    return None, None, "rejected", (
                        f"contract_id {line.contract_id!r} and contract_number {line.contract_number!r} name "
                        f"different contracts"
                    )
            return row, "contract_id", "", None
        if line.contract_number:
            row, ambiguous = index.number(line.contract_number)
            if row is not None:
                return row, "contract_number", "", None
            if ambiguous:
                return None, None, "unmatched", (
                    f"contract number {line.contract_number!r} matches several contracts when case is ignored: "
                    + ", ".join(sorted(r.id for r in ambiguous))
                )
            return None, None, "unmatched", f"no contract with number {line.contract_number!r}"
        tokens = reference_tokens(line.reference)
        if not tokens:
            return None, None, "unmatched", (
                "no contract_id, no contract_number and no candidate contract number in the reference"
            )
        found: dict[str, _Row] = {}
        for token in tokens:
            for row in index.token(token):
                found[row.id] = row
        if len(found) == 1:
            return next(iter(found.values())), "reference", "", None
        if found:
            return None, None, "unmatched", "the reference names several contracts: " + ", ".join(sorted(found))
        return None, None, "unmatched", "the reference names no known contract number or contract id"

    async def _apply_bank_lines(
        self, lines: list[s.BankLineIn], pendings: list[s.BankLineResult], by: str
    ) -> list[s.BankLineResult]:
        """One contract's lines in a single ``record_payments`` update; each gets its outcome."""
        cid = pendings[0].contract_id
        assert cid is not None
        out: list[s.BankLineResult | None] = [None] * len(lines)
        batch, positions = [], []
        for k, (line, pending) in enumerate(zip(lines, pendings, strict=True)):
            try:
                batch.append(schemas.PaymentIn(reference=bank_reference(line.line_id), amount=line.amount,
                                               currency=line.currency, received_at=line.received_at, by=by))
                positions.append(k)
            except ValueError as exc:  # pydantic: a line the payment schema refuses
                out[k] = s.BankLineResult(**_base(pending), outcome="rejected", reason=str(exc).splitlines()[0])
        if batch:
            try:
                outcomes = await self.contracts.record_payments(cid, batch)
            except Problem as p:
                # The whole contract refused (closed, gone, Temporal unreachable): say so per line.
                for k in positions:
                    out[k] = await self._refused(lines[k], pendings[k], p)
                outcomes = []
            except Exception as exc:  # noqa: BLE001 - one contract must never fail the batch
                log.exception("bank lines for contract %s failed", cid)
                for k in positions:
                    out[k] = s.BankLineResult(**_base(pendings[k]), outcome="rejected",
                                              reason=f"unexpected error: {type(exc).__name__}", retryable=True)
                outcomes = []
            for k, o in zip(positions, outcomes, strict=False):
                base = _base(pendings[k])
                if o.error_type:
                    out[k] = s.BankLineResult(**base, outcome="rejected", reason=o.error)
                elif o.applied:
                    out[k] = s.BankLineResult(**base, outstanding=o.outstanding, credit=o.credit, outcome="applied",
                                              allocations=o.allocations)
                else:
                    out[k] = s.BankLineResult(**base, outstanding=o.outstanding, credit=o.credit, outcome="duplicate",
                                              reason=f"reference {o.reference!r} was already recorded")
        return [r for r in out if r is not None]

    async def _refused(self, line: s.BankLineIn, pending: s.BankLineResult, p: Problem) -> s.BankLineResult:
        ref = bank_reference(line.line_id)
        if p.status == 409 and pending.contract_id and await self._payment_already_recorded(
                pending.contract_id, ref, line.amount):
            # A closed contract refuses every update, but this very line is already on it.
            return s.BankLineResult(**_base(pending), outcome="duplicate", reason="already recorded; the contract is closed")
        return s.BankLineResult(**_base(pending), outcome="rejected", reason=p.detail, retryable=p.status == 503)

    async def _payment_already_recorded(self, cid: str, ref: str, amount: str) -> bool:
        try:
            live = await self.contracts.get(cid)
        except Exception:  # noqa: BLE001 - cannot tell: report the original refusal
            return False
        for p in live.payments:
            if p.reference == ref:
                try:
                    return Decimal(p.amount) == Decimal(amount)
                except InvalidOperation:
                    return False
        return False

    # ================================================================== ERP
    async def erp_progress(self, body: s.ErpProgressIn, actor: str | None = None) -> s.ErpProgressOut:
        actor = actor or ERP_ACTOR
        _check_size(len(body.lines))
        lines = body.lines
        by_order = await asyncio.to_thread(self._erp_lookup, lines)
        results: list[s.ErpLineResult | None] = [None] * len(lines)
        groups: dict[str, list[int]] = defaultdict(list)
        events: dict[str, tuple] = {}
        for i, line in enumerate(lines):
            head = dict(index=i, erp_order_no=line.erp_order_no, milestone=line.milestone, event_id=line.event_id)
            if not 0 <= line.percent <= 100:
                results[i] = s.ErpLineResult(
                    **head, outcome="rejected", reason=f"percent must be a whole number from 0 to 100, got {line.percent}"
                )
                continue
            if line.event_id is not None:
                content = (line.erp_order_no, line.milestone, line.percent, line.message, line.complete)
                if events.setdefault(line.event_id, content) != content:
                    results[i] = s.ErpLineResult(
                        **head, outcome="rejected",
                        reason=f"event_id {line.event_id!r} appears earlier in this batch with different content",
                    )
                    continue
            rows = by_order.get(line.erp_order_no, [])
            active = [r for r in rows if r.status not in FINAL]
            target = active if active else rows
            if not target:
                results[i] = s.ErpLineResult(
                    **head, outcome="unmatched", reason=f"no contract with ERP order number {line.erp_order_no!r}"
                )
                continue
            if len(target) > 1:
                which = "active contracts" if active else "contracts, all closed"
                results[i] = s.ErpLineResult(
                    **head, outcome="rejected",
                    reason=f"ERP order number {line.erp_order_no!r} is ambiguous: it is on several {which} ("
                    + ", ".join(sorted(r.id for r in target)) + ")",
                )
                continue
            results[i] = s.ErpLineResult(**head, outcome="rejected", contract_id=target[0].id, reason="not processed")
            groups[target[0].id].append(i)

        async def apply(i: int) -> None:
            results[i] = await self._apply_erp_line(lines[i], _provisional(results[i]), actor)

        await self._run_groups(groups, apply)
        final = [r for r in results if r is not None]
        return s.ErpProgressOut(totals=_totals(final), lines=final)

    def _erp_lookup(self, lines: Sequence[s.ErpProgressLineIn]) -> dict[str, list[_Row]]:
        orders = sorted({line.erp_order_no for line in lines})
        found: dict[str, list[_Row]] = defaultdict(list)
        with self.sessions() as session:
            for chunk in _chunks(orders):
                for row in _rows(session, Contract.erp_order_no.in_(chunk)):
                    if row.erp_order_no:
                        found[row.erp_order_no].append(row)
        return found

    async def _apply_erp_line(self, line: s.ErpProgressLineIn, pending: s.ErpLineResult,
                              actor: str = ERP_ACTOR) -> s.ErpLineResult:
        cid = pending.contract_id
        assert cid is not None
        base = pending.model_dump(include={"index", "erp_order_no", "milestone", "event_id", "contract_id"})
        try:
            if line.complete:
                op = await self.contracts.complete_milestone(
                    cid, line.milestone, schemas.CompleteIn(by=actor, note=line.message)
                )
            else:
                op = await self.contracts.report_progress(
                    cid, line.milestone, schemas.ProgressIn(percent=line.percent, message=line.message, source=actor)
                )
        except Problem as p:
            if p.status == 409:
                status = await self._milestone_status(cid, line.milestone)
                if status == "done":
                    reason = (
                        "the milestone is already done"
                        if line.complete
                        else "the milestone is already done; this progress report is superseded"
                    )
                    return s.ErpLineResult(**{**base, "milestone_status": status}, outcome="duplicate", reason=reason)
            return s.ErpLineResult(**base, outcome="rejected", reason=p.detail, retryable=p.status == 503)
        except Exception as exc:  # noqa: BLE001 - one line must never fail the batch
            log.exception("ERP line for contract %s milestone %s failed", cid, line.milestone)
            return s.ErpLineResult(
                **base, outcome="rejected", reason=f"unexpected error: {type(exc).__name__}", retryable=True
            )
        return s.ErpLineResult(
            **{**base, "milestone_status": op.item_status, "contract_status": op.contract_status},
            outcome="applied" if op.changed else "duplicate",
            reason=None if op.changed else "the same progress was already recorded",
        )

    async def _milestone_status(self, cid: str, key: str) -> str | None:
        try:
            live = await self.contracts.get(cid)
        except Exception:  # noqa: BLE001 - cannot tell: report the original refusal
            return None
        return next((m.status for m in live.milestones if m.key == key), None)

    # ================================================================== shared
    async def _run_contract_groups(
        self, groups: dict[str, list[int]], apply: Callable[[list[int]], Awaitable[None]]
    ) -> None:
        """Each contract's lines as one group; contracts concurrently, ``concurrency`` at a time."""
        gate = asyncio.Semaphore(self.concurrency)

        async def run(indexes: list[int]) -> None:
            async with gate:
                await apply(indexes)

        await asyncio.gather(*(run(indexes) for indexes in groups.values()))

    async def _run_groups(self, groups: dict[str, list[int]], apply: Callable[[int], Awaitable[None]]) -> None:
        """Each contract's lines in order; contracts concurrently, ``concurrency`` at a time."""
        gate = asyncio.Semaphore(self.concurrency)

        async def run(indexes: list[int]) -> None:
            async with gate:
                for i in indexes:
                    await apply(i)

        await asyncio.gather(*(run(indexes) for indexes in groups.values()))


def _base(pending: s.BankLineResult) -> dict:
    return pending.model_dump(include={"line_id", "index", "contract_id", "matched_by"})


def _same_payment(recorded: tuple[Decimal, str], line: s.BankLineIn) -> bool:
    amount, currency = recorded
    try:
        return currency == line.currency and amount == Decimal(line.amount.strip())
    except InvalidOperation:
        return False


def _check_size(n: int) -> None:
    if n > s.MAX_BATCH_LINES:
        raise Problem(
            413,
            f"a batch holds at most {s.MAX_BATCH_LINES} lines, this one has {n}; split it (lines are idempotent, "
            f"so re-sending a part is safe)",
            slug="batch-too-large",
        )


def _totals(results: Sequence[s.BankLineResult | s.ErpLineResult]) -> s.Totals:
    counts = {o: 0 for o in s.OUTCOMES}
    for r in results:
        counts[r.outcome] += 1
    return s.Totals(lines=len(results), **counts)
