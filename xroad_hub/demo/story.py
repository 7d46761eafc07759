"""The Thai once-only scenario, played end to end on one machine (``xroad-hub demo``).

``play(workdir, out)`` starts a fresh demo federation and the BMA case service (through
``harness``), then acts every part of the story with the same public interfaces real users
have: a citizen applies uploading nothing, the case service gathers the evidence through the
hub, she previews and confirms, an officer approves, a portal that names no purpose is
refused, she reads her data tracker, and finally every node's log is verified offline (and
one checkpoint timestamp with OpenSSL, a tool the hub did not write). It prints one short
line per event as it goes and returns True only if every check held.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from cryptography import x509

from xroad_hub.demo.harness import (
    BMA_NODE,
    CASE_SERVICE_CLIENT,
    DEFAULT_CONFIG,
    SEED,
    Applicant,
    CaseServiceProcess,
    DemoFederation,
    demo_applicant,
    start_case_service,
    start_demo_federation,
)
from xroad_hub.errors import HubError
from xroad_hub.messagelog.audit import AuditReport, verify_log
from xroad_hub.messagelog.source import open_reader

__all__ = ["StoryFailure", "play"]

DGA_NODE = "TH/GOV/DGA/hub1"
DOPA_NODE = "TH/GOV/DOPA/hub1"
DEVPORTAL = "TH/GOV/DGA/devportal"
OFFICER = "officer.malee"
APPROVAL = "Identity, premises deed, company and tax clearance verified from registry evidence."
# Citizens read times in their own zone; the logs keep UTC.
ICT = timezone(timedelta(hours=7), "ICT")


class StoryFailure(HubError):
    """A step's check did not hold; ``hint`` says what to look at or do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


class _Narrator:
    """Writes the story line by line, flushing each so progress shows while it runs."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.step = ""
        self.hint = ""
        self.started = time.monotonic()

    def say(self, text: str = "", indent: int = 0) -> None:
        self.out.write(" " * indent + text + "\n")
        self.out.flush()

    def begin(self, label: str, title: str, hint: str) -> None:
        """Start a step; ``hint`` is what to do if it fails for an unexpected reason."""
        self.step, self.hint = f"{label}. {title}", hint
        self.say(f"{label}. {title}")

    def detail(self, text: str) -> None:
        self.say(text, indent=3)


def _check(condition: bool, message: str, hint: str = "") -> None:
    if not condition:
        raise StoryFailure(message, hint)


def _when(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone(ICT).strftime("%Y-%m-%d %H:%M:%S ICT")


async def play(workdir: Path, out: TextIO, *, config: Path = DEFAULT_CONFIG) -> bool:
    """Play the whole scenario in ``workdir`` (which should be empty) and narrate to ``out``.

    Returns True only if every step worked. On a failure the story says which step, why and
    what to do, still stops everything cleanly and still verifies the logs written so far.
    """
    say = _Narrator(out)
    say.say(f"xroad-hub demo: the Thai once-only story on one machine (work directory {workdir})")
    demo: DemoFederation | None = None
    cs: CaseServiceProcess | None = None
    ok = True
    try:
        say.begin(
            "1",
            "Federation up",
            "a component did not start: is loopback networking available? Re-run with "
            "--keep --verbose and read the log lines above the failure",
        )
        demo = await start_demo_federation(workdir, config)
        seed = _data_seed(demo)
        applicant = await asyncio.to_thread(demo_applicant, seed)
        _federation_up(say, demo)
        cs = await start_case_service(demo, workdir)
        say.detail(f"case service of {CASE_SERVICE_CLIENT} up at {cs.url}, via {BMA_NODE}")
        async with aiohttp.ClientSession() as http:
            case_no = await _apply(say, demo, cs, applicant)
            await _preview_and_confirm(say, demo, cs, applicant, case_no)
            await _officer_decides(say, demo, cs, applicant, case_no)
            other = _other_citizen(seed, applicant)
            denied_id = await _default_deny(say, demo, http, other)
            await _tracker(say, demo, cs, http, applicant, other, case_no, denied_id)
    except Exception as exc:  # every failure is reported as part of the story
        ok = False
        _report_failure(say, exc)
    finally:
        # Stopped before the audit: the nodes' final checkpoints then cover every exchange.
        say.begin(
            "7",
            "Stop, then audit every node's log offline",
            "a log did not verify: run 'xroad-hub audit verify LOG --root-ca ROOT' on it (with "
            "--keep) to see each finding",
        )
        try:
            if cs is not None:
                status = await cs.stop()
                say.detail(f"case service stopped (exit status {status})")
            if demo is not None:
                await demo.stop()
                say.detail("federation stopped; every node wrote its final checkpoint")
        except Exception as exc:
            ok = False
            _report_failure(say, exc)
    if demo is None:
        say.detail("nothing to audit: the federation never started")
        return _verdict(say, False)
    try:
        ok = await _audit(say, demo) and ok
    except Exception as exc:
        ok = False
        _report_failure(say, exc)
    return _verdict(say, ok)


def _report_failure(say: _Narrator, exc: Exception) -> None:
    hint = exc.hint if isinstance(exc, StoryFailure) and exc.hint else say.hint
    reason = str(exc) or type(exc).__name__
    say.say(f"FAILED in step {say.step}: {reason}")
    if hint:
        say.say(f"   what to do: {hint}")


def _verdict(say: _Narrator, ok: bool) -> bool:
    seconds = time.monotonic() - say.started
    if ok:
        say.say(f"DEMO OK: every step of the story worked ({seconds:.1f} s).")
    else:
        say.say(f"DEMO FAILED after {seconds:.1f} s: see the FAILED line(s) above.")
    return ok


# --- 1. federation ---------------------------------------------------------------------------


def _data_seed(demo: DemoFederation) -> int:
    """The seed of the federation's synthetic registries (its backends share one)."""
    seeds = {b.seed for b in demo.fed.backends}
    return seeds.pop() if len(seeds) == 1 else SEED


def _federation_up(say: _Narrator, demo: DemoFederation) -> None:
    names = {str(m): n for m, n in demo.fed.members.items()}
    for node in demo.fed.nodes:
        node_id = str(node.id)
        member = node_id.rsplit("/", 1)[0]
        roles = []
        if node.clients:
            roles.append("clients " + ", ".join(str(c.id).rsplit("/", 1)[1] for c in node.clients))
        services = [str(s.id).rsplit("/", 1)[1] for s in node.services]
        services += [str(s.provider).rsplit("/", 1)[1] + " (SOAP)" for s in node.soap_services]
        if services:
            roles.append("serves " + ", ".join(services))
        if node.audit_listen is not None:
            roles.append("audit+tracker")
        say.detail(f"{node_id:<17} {names.get(member, member)}: {'; '.join(roles)}")
    say.detail(
        f"central registry {demo.endpoints['registry']}, timestamp authority "
        f"{demo.endpoints['tsa']}, legacy backends {len(demo.fed.backends)}"
    )


# --- 2. apply --------------------------------------------------------------------------------


async def _apply(
    say: _Narrator, demo: DemoFederation, cs: CaseServiceProcess, who: Applicant
) -> str:
    say.begin(
        "2",
        f"{who.name_en} applies for a food-business licence, uploading nothing",
        f"see the case service's log ({cs.log_path}) and BMA's node; a failed item can be "
        "retried with POST /cases/{no}/evidence/{type}/retry",
    )
    say.detail(
        f"citizen id {who.citizen_id}, company {who.juristic_id} ({who.company_en}); "
        "the case service asks the hub for every piece of evidence..."
    )
    token = demo.citizen_token(who.citizen_id, CASE_SERVICE_CLIENT)
    view = await cs.client.apply(token, citizen_id=who.citizen_id, juristic_id=who.juristic_id)
    case_no = str(view["case_no"])
    items = {e["type"]: e for e in view["evidence"]}
    for ex in view["exchanges"]:
        item = items.get(ex["type"], {})
        code = f" {ex['error_code']}" if ex["error_code"] else ""
        result = "ok" if ex["ok"] else f"FAILED (HTTP {ex['status']}{code})"
        say.detail(
            f"exchange {ex['type']:<20} {item.get('service') or '?':<47} "
            f"id {ex['message_id']}  {result}"
        )
    missing = [e for e in view["evidence"] if e["status"] != "ok"]
    for e in missing:
        error = e.get("error") or {}
        excerpt = (error.get("body_excerpt") or "")[:120]
        say.detail(f"missing {e['type']}: {error.get('message')} {excerpt}".rstrip())
    note = view["history"][-1]["note"] if view["history"] else ""
    say.detail(
        f"case {case_no}: {view['status']} ({note}); SLA {view['sla_days']} days, "
        f"due {_when(view['due_at'])}"
    )
    _check(
        view["status"] == "evidence-complete",
        f"case {case_no} is {view['status']}, not evidence-complete",
        "read the 'missing' lines: a 404 means the registry holds nothing for that id (the "
        "applicant comes from demo_applicant(seed)), a 503 that an export is not loaded, an "
        f"X-Road error names the refusing node; the case service's log is {cs.log_path}",
    )
    return case_no


# --- 3. preview and confirm ------------------------------------------------------------------


def _data(view: dict[str, Any], evidence_type: str) -> Any:
    for item in view["evidence"]:
        if item["type"] == evidence_type:
            _check(
                item["data"] is not None,
                f"the preview shows no {evidence_type} document ({item.get('view_error')})",
            )
            return item["data"]
    raise StoryFailure(f"the case has no {evidence_type} item")


def _name(name: dict[str, Any], thai: bool) -> str:
    # Thai writes the title straight before the given name; English separates them.
    title = name.get("title") or ""
    full = f"{name['givenName']} {name['familyName']}"
    return f"{title}{full}" if thai else f"{title} {full}".strip()


async def _preview_and_confirm(
    say: _Narrator, demo: DemoFederation, cs: CaseServiceProcess, who: Applicant, case_no: str
) -> None:
    say.begin(
        "3",
        "She previews the evidence the agencies hold, and confirms",
        "the case service could not show or confirm the case; see its log",
    )
    token = demo.citizen_token(who.citizen_id, CASE_SERVICE_CLIENT)
    view = await cs.client.get(token, case_no)
    person = _data(view, "identity")["person"]
    say.detail(
        f"name (DOPA): {_name(person['nameTh'], True)} / {_name(person['nameEn'], False)}, "
        f"born {person['birthDate']}"
    )
    house = _data(view, "house_registration")["houseRegistration"]
    addr = house["addressEn"]
    say.detail(
        f"house registration (DOPA): {house['houseId']}, {house['role']} of house, "
        f"{addr['houseNo']} {addr['road']}, {addr['district']}, {addr['province']}"
    )
    company = _data(view, "company_registration")
    directors = [d["citizen_id"] for d in company.get("directors", [])]
    role = "she is a director" if who.citizen_id in directors else "she is NOT a director"
    say.detail(
        f"company (DBD): {company['name_th']} / {company['name_en']}, {company['status']}, {role}"
    )
    deeds = _data(view, "title_deed")["records"]
    _check(bool(deeds), "the land registry holds no title deed for her")
    d = deeds[0]
    say.detail(
        f"title deed (DOL): no. {d['deed_no']}, land office {d['land_office_code']}, "
        f"{d['area_rai']}-{d['area_ngan']}-{d['area_sqwa']} rai-ngan-wa, {d['address_th']}"
    )
    clearances = _data(view, "tax_clearance")["records"]
    _check(bool(clearances), "the Revenue Department holds no tax-clearance record")
    latest = max(clearances, key=lambda r: int(r["tax_year"]))
    say.detail(
        f"tax clearance (RD): tax year {latest['tax_year']} {latest['status']} "
        f"({latest['status_th']}), certificate {latest['certificate_no'] or '-'}"
    )
    sources = {item["data_source"] for item in view["evidence"]}
    say.detail(f"shown from the case service's cache ({', '.join(sorted(map(str, sources)))})")
    confirmed = await cs.client.confirm(token, case_no)
    say.detail(f"she confirms: case {case_no} is {confirmed['status']}")
    _check(confirmed["status"] == "in-review", f"case is {confirmed['status']}, not in-review")


# --- 4. officer ------------------------------------------------------------------------------


async def _officer_decides(
    say: _Narrator, demo: DemoFederation, cs: CaseServiceProcess, who: Applicant, case_no: str
) -> None:
    say.begin(
        "4",
        "An officer reviews and approves; she sees the status change",
        "the officer's view or decision failed; see the case service's log",
    )
    officer = demo.officer_token(OFFICER, CASE_SERVICE_CLIENT)
    waiting = await cs.client.officer_cases(officer, status="in-review")
    say.detail(f"{OFFICER} lists cases in review: {', '.join(c['case_no'] for c in waiting)}")
    _check(any(c["case_no"] == case_no for c in waiting), f"{case_no} is not in the review list")
    decided = await cs.client.decide(officer, case_no, "approve", APPROVAL)
    say.detail(f"{OFFICER} approves: {decided['status']} ({APPROVAL})")
    _check(decided["status"] == "approved", f"case is {decided['status']}, not approved")
    token = demo.citizen_token(who.citizen_id, CASE_SERVICE_CLIENT)
    view = await cs.client.get(token, case_no, payload=False)
    say.detail(f"her view of {case_no}, status history:")
    for h in view["history"]:
        note = f" - {h['note']}" if h["note"] else ""
        say.detail(f"  {_when(h['at'])}  {h['status']:<17} by {h['by']}{note}")
    decision = view["decision"] or {}
    submitted = datetime.fromisoformat(view["submitted_at"])
    at = datetime.fromisoformat(decision.get("at") or view["updated_at"])
    within = at <= datetime.fromisoformat(view["due_at"])
    say.detail(
        f"decided {(at - submitted).total_seconds():.1f} s after submission: "
        f"{'within' if within else 'OUTSIDE'} the {view['sla_days']}-day SLA"
    )
    _check(view["status"] == "approved" and within, "her view does not show a timely approval")


# --- 5. default deny -------------------------------------------------------------------------


async def _default_deny(
    say: _Narrator, demo: DemoFederation, http: aiohttp.ClientSession, other: str
) -> str:
    say.begin(
        "5",
        "Default deny: a portal asks DOPA without stating a purpose",
        "DOPA's node must refuse requests without X-Road-Purpose (purposes in its config)",
    )
    # Someone else's record: the refusal must then show in that person's tracker, not hers.
    message_id = str(uuid.uuid4())
    url = f"{demo.node_url(DGA_NODE)}/r1/TH/GOV/DOPA/population/getPerson?citizenId={other}"
    headers = {"X-Road-Client": DEVPORTAL, "X-Road-Id": message_id, "X-Road-UserId": "dev.test"}
    async with http.get(url, headers=headers) as resp:
        status, error = resp.status, resp.headers.get("X-Road-Error", "")
        body = await resp.json(content_type=None)
    message = str(body.get("message", "")) if isinstance(body, dict) else ""
    say.detail(f"{DEVPORTAL} GET getPerson?citizenId={other}, no X-Road-Purpose (id {message_id})")
    say.detail(f"-> HTTP {status} {error}: {message}")
    _check(
        error.endswith("AccessDenied") and "purpose" in message.lower(),
        f"expected AccessDenied naming the missing purpose, got HTTP {status} {error!r}",
    )
    return message_id


def _other_citizen(seed: int, who: Applicant) -> str:
    """A seeded company director other than her (for seed 2569 her co-director): a real
    person of the registries, so that a read about him would succeed if it were allowed."""
    from xroad_hub.demo.synthetic import companies, demo_people

    persons = demo_people(seed, 200)
    for c in companies(seed, 200, persons):
        for cid in c.directors:
            if cid != who.citizen_id:
                return cid
    raise StoryFailure("no second seeded citizen found")


# --- 6. data tracker -------------------------------------------------------------------------


async def _tracker(
    say: _Narrator,
    demo: DemoFederation,
    cs: CaseServiceProcess,
    http: aiohttp.ClientSession,
    who: Applicant,
    other: str,
    case_no: str,
    denied_id: str,
) -> None:
    say.begin(
        "6",
        "Her data tracker: who read her data, when, for which case and why",
        "a node's /tracker/accesses did not answer as expected; try 'xroad-hub tracker "
        "--citizen ID --config FEDERATION --certs-dir CERTS' with --keep",
    )
    mine = await _accesses(demo, http, who.citizen_id)
    nodes = [str(n.id) for n in demo.fed.nodes if n.audit_listen is not None]
    say.detail(f"asked the trackers of {len(nodes)} nodes ({', '.join(nodes)}) with her token:")
    for e in mine:
        result = f"refused {e['refusal']}" if e["refusal"] else f"answered {e['status']}"
        say.detail(
            f"  {_when(e['at'])}  {e['agency']} ({e['client']}), official {e['official']}: "
            f"{e['service']} [{e['evidence_type']}] case {e['issue']}, "
            f"purpose {e['purpose']}, {result}"
        )
    say.detail(f"{len(mine)} tracker entries")
    token = demo.citizen_token(who.citizen_id, CASE_SERVICE_CLIENT)
    view = await cs.client.get(token, case_no, payload=False)
    about_her = {e["type"] for e in view["evidence"] if e["subject"] == "citizen_id"}
    expected = {x["message_id"] for x in view["exchanges"] if x["type"] in about_her}
    seen = {e["message_id"] for e in mine}
    _check(
        expected <= seen,
        f"reads of her data missing from her tracker: {sorted(expected - seen)}",
        "the provider nodes' data-subject index (subject locators) must match the catalog",
    )
    _check(
        all(e["issue"] == case_no and e["purpose"] for e in mine),
        "her tracker holds entries that are not her case's reads",
    )
    _check(denied_id not in seen, "her tracker shows the refused request about someone else")
    say.detail(
        f"all {len(expected)} reads of her data for case {case_no} are there "
        f"({', '.join(sorted(about_her))}); nothing about anyone else"
    )
    theirs = await _accesses(demo, http, other)
    refused = [e for e in theirs if e["message_id"] == denied_id]
    _check(bool(refused), "the refused request is missing from the other citizen's tracker")
    say.detail(
        f"the other citizen's tracker shows the refused attempt: {refused[0]['client']}, "
        f"{refused[0]['refusal']}"
    )


async def _accesses(
    demo: DemoFederation, http: aiohttp.ClientSession, citizen_id: str
) -> list[dict[str, Any]]:
    """Every node's tracker entries for ``citizen_id``, merged, oldest first."""
    ssl_ctx = demo.ssl_context()
    entries: list[dict[str, Any]] = []
    for node in demo.fed.nodes:
        if node.audit_listen is None:
            continue
        node_id = str(node.id)
        # One token per node: a tracker accepts only tokens addressed to itself.
        token = demo.citizen_token(citizen_id, node_id, ttl=60)
        after: int | None = -1
        while after is not None:
            url = f"{demo.node_url(node_id, 'audit')}/tracker/accesses?limit=1000&after={after}"
            headers = {"Authorization": f"Bearer {token}"}
            async with http.get(url, headers=headers, ssl=ssl_ctx) as resp:
                page = await resp.json(content_type=None)
                _check(resp.status == 200, f"tracker of {node_id}: HTTP {resp.status} {page}")
            entries.extend(page["entries"])
            after = page["next_after"]
    entries.sort(key=lambda e: (e["at"], e["node"], e["leaf_index"]))
    return entries


# --- 7. audit --------------------------------------------------------------------------------


async def _audit(say: _Narrator, demo: DemoFederation) -> bool:
    root = x509.load_pem_x509_certificate(demo.pki.root_ca.cert.read_bytes())
    ok = True
    for node in demo.fed.nodes:
        node_id = str(node.id)
        path = demo.log_path(node_id)
        report: AuditReport = await asyncio.to_thread(verify_log, path, [root])
        verdict = "OK" if report.ok else f"{len(report.findings)} PROBLEM(S)"
        say.detail(
            f"audit {node_id:<17} {report.entries:>3} entries, {report.checkpoints} checkpoints "
            f"({report.witnessed} witnessed, {report.timestamped} timestamped): {verdict}"
        )
        for finding in report.findings[:5]:
            say.detail(f"  BAD {finding}")
        # An empty log needs no checkpoint; a log with entries must end with one (the final
        # checkpoint at stop), or its last entries would be covered by nothing signed.
        ok = ok and report.ok and (report.checkpoints > 0 or report.entries == 0)
    _check(ok, "a node's log did not verify, or has entries but no checkpoint")
    await _openssl(say, demo)
    return ok


def _note_body(note: str) -> str:
    """The checkpoint text a signed note signs: everything before the blank line."""
    return note.split("\n\n", 1)[0] + "\n"


def _latest_timestamped(path: Path) -> tuple[str, bytes] | None:
    with open_reader(path) as reader:
        stamped = [cp for cp in reader.checkpoints() if cp["timestamp_token"] is not None]
    if not stamped:
        return None
    return _note_body(str(stamped[-1]["note"])), bytes(stamped[-1]["timestamp_token"])


async def _openssl(say: _Narrator, demo: DemoFederation) -> None:
    """Verify one checkpoint's RFC 3161 timestamp with OpenSSL, taken from the log alone."""
    openssl = shutil.which("openssl")
    if openssl is None:
        say.detail("openssl is not installed: independent timestamp check skipped")
        return
    found = await asyncio.to_thread(_latest_timestamped, demo.log_path(DOPA_NODE))
    _check(found is not None, f"{DOPA_NODE} has no timestamped checkpoint")
    assert found is not None
    text, token = found
    folder = demo.workdir / "openssl"
    folder.mkdir(exist_ok=True)
    (folder / "checkpoint.txt").write_text(text, encoding="utf-8")
    (folder / "token.tsr").write_bytes(token)
    cmd = [
        openssl, "ts", "-verify", "-in", str(folder / "token.tsr"),
        "-data", str(folder / "checkpoint.txt"),
        "-CAfile", str(demo.pki.root_ca.cert), "-untrusted", str(demo.pki.tsa.cert),
    ]  # fmt: skip
    result = await asyncio.to_thread(
        subprocess.run, cmd, capture_output=True, text=True, timeout=60, check=False
    )
    lines = _lines(result.stdout + result.stderr)
    size = text.splitlines()[1]
    say.detail(
        f"openssl ts -verify, {DOPA_NODE} checkpoint of {size} entries: "
        f"{next((ln for ln in lines if ln.startswith('Verification')), ' / '.join(lines[-2:]))}"
    )
    _check(
        "Verification: OK" in result.stdout,
        "OpenSSL did not verify the checkpoint's timestamp",
        f"run the command yourself: {' '.join(cmd)}",
    )


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip()]
