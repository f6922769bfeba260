"""Documents, approval records and the communication log (issue #5 parts 3 and 4), end to end.

The running service (real uvicorn, Temporal dev server and worker) on SQLite and on PostgreSQL.
Uploads land in the service's DOCUMENT_DIR (a temp directory per service, see conftest); the
tests look at it to check that the same content is stored once and to damage a stored file.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import time
import uuid
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from tests.helpers import contract_request, login, wait_for

pytestmark = pytest.mark.devserver

MiB = 1024 * 1024


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def service(request):
    return request.getfixturevalue("api_service" if request.param == "sqlite" else "api_service_pg")


def fake_pdf(size: int) -> bytes:
    """A PDF-looking file of ``size`` bytes: header, random body, trailer."""
    head, tail = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", b"\n%%EOF\n"
    return head + os.urandom(size - len(head) - len(tail)) + tail


def docx_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("_rels/.rels", "<Relationships/>")
        z.writestr("word/document.xml", "<w:document/>")
    return buf.getvalue()


def blobs(service) -> dict[str, Path]:
    """Every stored blob of the service: name (its SHA-256) -> path."""
    root = Path(service.settings.document_dir)
    return {p.name: p for p in root.glob("??/??/*") if p.is_file()}


def temp_files(service) -> list[Path]:
    return list((Path(service.settings.document_dir) / "tmp").iterdir())


async def new_contract(c: httpx.AsyncClient, owner: str = "li.wei") -> str:
    r = await c.post("/contracts", json=contract_request(datetime.now(timezone.utc), owner=owner))
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def upload(c: httpx.AsyncClient, cid: str, content: bytes, filename: str = "file.pdf",
                 content_type: str = "application/pdf", headers: dict | None = None, **fields) -> httpx.Response:
    return await c.post(f"/contracts/{cid}/documents", files={"file": (filename, content, content_type)},
                        data=fields, headers=headers or {})


def problem(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"] == "application/problem+json", r.headers
    return r.json()


async def colleague(c: httpx.AsyncClient, base_url: str) -> dict[str, str]:
    """A new sales person beside li.wei (same manager): logged in, with a Bearer header."""
    uid = f"sales.{uuid.uuid4().hex[:8]}"
    r = await c.post("/users", json={"id": uid, "name": "Colleague", "email": f"{uid}@example.com",
                                     "department": "sales", "manager_id": "zhang.min"})
    assert r.status_code == 201, r.text
    r = await c.post("/auth/password", json={"user_id": uid, "new_password": "colleague-secret-1"})
    assert r.status_code == 204, r.text
    return await login(base_url, uid, "colleague-secret-1")


# ============================================================================ the 20 MB PDF
async def test_a_20_mb_pdf_uploads_downloads_and_reuploads_with_hash_checks(service, capsys):
    async with httpx.AsyncClient(base_url=service.base_url, timeout=120) as admin:
        cid = await new_contract(admin)
    li = await login(service.base_url, "li.wei")
    pdf = fake_pdf(20 * MiB)
    sha = hashlib.sha256(pdf).hexdigest()
    async with httpx.AsyncClient(base_url=service.url, headers=li, timeout=120) as c:
        before = set(blobs(service))
        started = time.perf_counter()
        r = await upload(c, cid, pdf, "Contract 合同.pdf", kind="contract_text")
        up_seconds = time.perf_counter() - started
        assert r.status_code == 201, r.text
        doc = r.json()
        assert (doc["sha256"], doc["size"], doc["version"], doc["kind"]) == (sha, len(pdf), 1, "contract_text")
        assert doc["media_type"] == "application/pdf" and doc["uploaded"] is True and doc["created_by"] == "li.wei"
        assert doc["filename"] == "Contract 合同.pdf" and doc["title"] == "Contract 合同.pdf"
        assert r.headers["location"] == doc["download_url"] == f"/contracts/{cid}/documents/{doc['id']}/download"
        assert set(blobs(service)) - before == {sha}  # stored once, named by its hash
        assert blobs(service)[sha].read_bytes() == pdf

        # Download, streamed: same bytes, the hash in ETag / X-Content-SHA256 / Repr-Digest.
        started = time.perf_counter()
        h, size = hashlib.sha256(), 0
        async with c.stream("GET", doc["download_url"]) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"] == "application/pdf"
            assert resp.headers["content-length"] == str(len(pdf))
            assert resp.headers["etag"] == f'"{sha}"' and resp.headers["x-content-sha256"] == sha
            assert resp.headers["content-disposition"].startswith("attachment;")
            assert "filename*=UTF-8''Contract%20%E5%90%88%E5%90%8C.pdf" in resp.headers["content-disposition"]
            assert resp.headers["x-content-type-options"] == "nosniff"
            async for block in resp.aiter_bytes():
                h.update(block)
                size += len(block)
        down_seconds = time.perf_counter() - started
        assert (h.hexdigest(), size) == (sha, len(pdf))
        body = problem(await c.get(f"/contracts/{cid}/documents/{doc['id']}/content"), 404)  # generated ones only
        assert body["download_url"] == doc["download_url"]
        r = await c.get(doc["download_url"], headers={"If-None-Match": f'"{sha}"'})
        assert r.status_code == 304 and r.content == b""

        # Re-upload (another file name): version 2 of the contract text, the same blob.
        r = await upload(c, cid, pdf, "contract-signed.pdf", kind="contract_text")
        assert r.status_code == 201, r.text
        v2 = r.json()
        assert v2["version"] == 2 and v2["sha256"] == sha and v2["id"] != doc["id"]
        assert list(blobs(service)).count(sha) == 1 and set(blobs(service)) - before == {sha}
        versions = (await c.get(v2["versions_url"])).json()
        assert [(v["version"], v["id"]) for v in versions] == [(1, doc["id"]), (2, v2["id"])]
        listed = (await c.get(f"/contracts/{cid}/documents")).json()
        assert {d["id"] for d in listed} >= {doc["id"], v2["id"]}
        assert all(d["download_url"].endswith("/download") for d in listed)

        # One byte changed on disk: detected before anything is sent, for every version using the blob.
        path = blobs(service)[sha]
        os.chmod(path, 0o644)
        with open(path, "r+b") as f:
            f.seek(len(pdf) // 2)
            byte = f.read(1)
            f.seek(len(pdf) // 2)
            f.write(bytes([byte[0] ^ 0x01]))
        for d in (doc, v2):
            body = problem(await c.get(d["download_url"]), 500)
            assert body["type"] == "/problems/document-corrupt"
            assert f"stored document {d['id']} is corrupt" in body["detail"] and body["expected_sha256"] == sha

        # Uploading the same content again repairs the stored copy (same name, right bytes).
        r = await upload(c, cid, pdf, "contract-signed.pdf", kind="contract_text")
        assert r.status_code == 201 and r.json()["version"] == 3
        r = await c.get(doc["download_url"])
        assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == sha
        assert temp_files(service) == []
    with capsys.disabled():
        print(f"\n20 MiB PDF: upload {up_seconds:.2f} s, streamed download with hash check {down_seconds:.2f} s")


async def test_a_blob_changed_while_streaming_cuts_the_connection(api_service):
    """The check before sending passed, then the file changed: the last chunk is withheld."""
    from api.documents import service as d
    from core.storage import LocalBlobStore
    from models import Document

    store = LocalBlobStore(api_service.settings.document_dir)
    content = fake_pdf(3 * MiB)
    blob = store.put([content])
    doc = Document(id="x", contract_id="c", kind="attachment", series="x", version=1, title="x", filename="x.pdf",
                   media_type="application/pdf", size=len(content), sha256=blob.sha256, storage_key=blob.sha256)
    path = store.path_of(blob.sha256)
    received = []
    with pytest.raises(OSError, match="changed on storage"):
        async for chunk in d._stream_verified(store, doc):
            received.append(chunk)
            if len(received) == 1:
                os.chmod(path, 0o644)
                with open(path, "r+b") as f:
                    f.seek(len(content) - 10)
                    f.write(bytes([content[-10] ^ 0xFF]))
    assert sum(map(len, received)) < len(content)
    store.put([content])  # put it right for the other tests


async def test_a_download_whose_file_changes_after_the_check_is_cut_short(api_service, monkeypatch):
    """Over HTTP: the check before sending is made to pass on a damaged file (as if it changed
    right after): the client gets a short body and a protocol error, never a complete wrong file."""
    from api.documents import service as d

    async with httpx.AsyncClient(base_url=api_service.base_url, timeout=60) as c:
        cid = await new_contract(c)
        pdf = fake_pdf(3 * MiB)
        doc = (await upload(c, cid, pdf)).json()
        path = blobs(api_service)[doc["sha256"]]
        os.chmod(path, 0o644)
        with open(path, "r+b") as f:
            f.seek(len(pdf) - 100)
            f.write(bytes([pdf[-100] ^ 0xFF]))
        monkeypatch.setattr(d, "_hash_blob", lambda store, key: (doc["sha256"], doc["size"]))
        received = 0
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            async with c.stream("GET", doc["download_url"]) as resp:
                assert resp.status_code == 200
                async for block in resp.aiter_bytes():
                    received += len(block)
        assert received < len(pdf)
        monkeypatch.undo()
        problem(await c.get(doc["download_url"]), 500)
        assert (await upload(c, cid, pdf)).status_code == 201  # repaired
        assert (await c.get(doc["download_url"])).status_code == 200


# ============================================================================ limits and types
async def test_size_and_type_limits(service):
    async with httpx.AsyncClient(base_url=service.base_url, timeout=120) as c:
        cid = await new_contract(c)
        before = set(blobs(service))
        limit = service.settings.max_upload_bytes

        body = problem(await upload(c, cid, fake_pdf(limit + 1)), 413)
        assert body["type"] == "/problems/document-too-large" and str(limit) in body["detail"]
        r = await upload(c, cid, fake_pdf(limit))  # exactly the limit is fine
        assert r.status_code == 201, r.text[:300]
        exact = r.json()["sha256"]

        elf = b"\x7fELF\x02\x01\x01\x00" + os.urandom(4096)
        for filename, ctype in (("tool.exe", "application/octet-stream"), ("tool", "application/x-executable")):
            body = problem(await upload(c, cid, elf, filename, ctype), 415)
            assert body["type"] == "/problems/unsupported-media-type"
        problem(await upload(c, cid, b"MZ\x90\x00\x03\x00\x00\x00" + os.urandom(2048), "setup.exe",
                             "application/x-msdownload"), 415)
        problem(await upload(c, cid, fake_pdf(4096), "page.html", "text/html"), 415)  # a type we do not take
        problem(await upload(c, cid, b"<html>\xff\xfe not utf-8</html>", "x.txt", "text/plain"), 415)
        problem(await upload(c, cid, b"PK\x03\x04 not really a zip", "x.zip", "application/zip"), 415)
        problem(await c.post(f"/contracts/{cid}/documents", json={"file": "x"}), 415)  # not multipart

        body = problem(await upload(c, cid, b"", "empty.pdf"), 422)
        assert body["errors"][0]["field"] == "file"
        problem(await c.post(f"/contracts/{cid}/documents", data={"kind": "attachment"},
                             files={"other": ("x.pdf", fake_pdf(2048), "application/pdf")}), 422)
        problem(await upload(c, cid, fake_pdf(2048), kind="invoice"), 422)
        problem(await upload(c, cid, fake_pdf(2048), title="t" * 301), 422)
        problem(await upload(c, cid, fake_pdf(2048), title="a\x00b"), 422)
        # Nothing of the refused uploads stays behind.
        assert set(blobs(service)) - before == {exact}
        assert temp_files(service) == []

        # Accepted types, sniffed: text, docx, PNG; the declared type may be generic.
        r = await upload(c, cid, "会议纪要: delivery moved\n".encode(), "minutes.txt", "text/plain")
        assert r.status_code == 201 and r.json()["media_type"] == "text/plain; charset=utf-8", r.text
        r = await upload(c, cid, docx_bytes(), "offer.docx", "application/octet-stream")
        assert r.status_code == 201, r.text
        assert r.json()["media_type"] == "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
        png = b"\x89PNG\r\n\x1a\n" + os.urandom(1000)
        r = await upload(c, cid, png, "site.png", "image/png", title="Site photo")
        assert r.status_code == 201 and r.json()["title"] == "Site photo"
        # An attachment with the same title (any case) is its next version; another title is a new document.
        r2 = await upload(c, cid, png[:-1] + b"!", "site-2.png", "image/png", title="site PHOTO")
        assert r2.status_code == 201 and r2.json()["version"] == 2
        r3 = await upload(c, cid, png, "site.png", "image/png", title="Gate photo")
        assert r3.status_code == 201 and r3.json()["version"] == 1 and r3.json()["sha256"] == r.json()["sha256"]
        # Declared as one accepted type, the content another: the content decides what is stored and served.
        r = await upload(c, cid, png, "scan.pdf", "application/pdf")
        assert r.status_code == 201 and r.json()["media_type"] == "image/png", r.text
        assert (await c.get(r.json()["download_url"])).headers["content-type"] == "image/png"

        problem(await upload(c, "no-such-contract", fake_pdf(2048)), 404)
        problem(await c.get(f"/contracts/{cid}/documents/nope/download"), 404)
        problem(await c.get(f"/contracts/{cid}/documents/nope/versions"), 404)


async def test_generated_agreements_download_through_the_same_route(api_service):
    async with httpx.AsyncClient(base_url=api_service.base_url, timeout=60) as c:
        cid = await new_contract(c)
        r = await c.post(f"/contracts/{cid}/amendments", json={
            "requested_by": "li.wei", "reason": "Customer site not ready",
            "changes": [{"kind": "move_due", "key": "shipping", "shift": "P10D"}]})
        assert r.status_code == 201, r.text
        a = r.json()
        for role in a["required_roles"]:
            r = await c.post(f"/contracts/{cid}/amendments/{a['id']}/approve",
                             json={"by": a["approvers"][role], "role": role, "comment": f"ok for {role}"})
            assert r.status_code == 200, r.text

        async def agreement():
            docs = (await c.get(f"/contracts/{cid}/documents")).json()
            return docs or None

        doc = (await wait_for(agreement))[0]
        r = await c.get(doc["download_url"])
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert hashlib.sha256(r.content).hexdigest() == doc["sha256"] == r.headers["etag"].strip('"')
        versions = (await c.get(f"/contracts/{cid}/documents/{doc['id']}/versions")).json()
        assert [v["version"] for v in versions] == [1] and versions[0]["uploaded"] is False

        # Approval records, from the event log.
        async def recorded():
            rows = (await c.get(f"/contracts/{cid}/approvals")).json()
            return rows if len(rows) == len(a["required_roles"]) else None

        rows = await wait_for(recorded)
        assert {(x["role"], x["by"], x["decision"], x["comment"]) for x in rows} == {
            (role, a["approvers"][role], "approved", f"ok for {role}") for role in a["required_roles"]}
        assert all(x["amendment_id"] == a["id"] and x["amendment_number"] == 1 for x in rows)

        # A rejected one is recorded too.
        r = await c.post(f"/contracts/{cid}/amendments", json={
            "requested_by": "li.wei", "reason": "Try again", "changes": [
                {"kind": "move_due", "key": "shipping", "shift": "P3D"}]})
        b = r.json()
        role = b["required_roles"][0]
        r = await c.post(f"/contracts/{cid}/amendments/{b['id']}/reject",
                         json={"by": b["approvers"][role], "role": role, "comment": "no"})
        assert r.status_code == 200, r.text

        async def rejected():
            rows = (await c.get(f"/contracts/{cid}/approvals", params={"amendment_id": b["id"]})).json()
            return rows or None

        rows = await wait_for(rejected)
        assert [(x["decision"], x["comment"], x["amendment_number"]) for x in rows] == [("rejected", "no", 2)]

        # A second agreement is a document of its own, not version 2 of the first.
        r = await c.post(f"/contracts/{cid}/amendments", json={
            "requested_by": "li.wei", "reason": "Once more", "changes": [
                {"kind": "move_due", "key": "shipping", "shift": "P2D"}]})
        d = r.json()
        for role in d["required_roles"]:
            r = await c.post(f"/contracts/{cid}/amendments/{d['id']}/approve",
                             json={"by": d["approvers"][role], "role": role})
            assert r.status_code == 200, r.text

        async def two_agreements():
            docs = (await c.get(f"/contracts/{cid}/documents")).json()
            return docs if len(docs) == 2 else None

        docs = await wait_for(two_agreements)
        assert [x["version"] for x in docs] == [1, 1] and len({x["id"] for x in docs}) == 2
        assert sorted(x["title"].split(" / ")[0] for x in docs) == ["Supplementary agreement No. 1",
                                                                     "Supplementary agreement No. 3"]
        for x in docs:
            versions = (await c.get(f"/contracts/{cid}/documents/{x['id']}/versions")).json()
            assert [v["id"] for v in versions] == [x["id"]]
        # Approval times read as a person writes them, in the business zone (not raw UTC ISO).
        html = (await c.get(doc["download_url"])).text
        assert "+08:00" not in html and "T0" not in html.split("审批记录")[1].split("</table>")[0]
        assert re.search(r"<td>\d{4}-\d{2}-\d{2} \d{2}:\d{2}</td>", html), html


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_migration_0017_makes_each_agreement_a_document_of_its_own(db, tmp_path, request):
    """Agreements written before 0017 (one series per contract, No. N as version N) each become a
    document of their own; the downgrade numbers them back in the order they were made."""
    from sqlalchemy import create_engine, text

    from core.migrate import alembic_config, upgrade
    from tests.conftest import drop_pg_database, new_pg_database

    if db == "sqlite":
        url, cleanup = f"sqlite:///{tmp_path / 'm.db'}", None
    else:
        admin = request.getfixturevalue("pg_server")
        name, url = new_pg_database(admin)
        cleanup = (admin, name)
    engine = create_engine(url)
    try:
        upgrade(url, "0016")
        insert = text("INSERT INTO documents (id, contract_id, kind, series, version, title, filename, media_type, "
                      "size, sha256, source_key, created_by, created_at) VALUES (:id, :c, :k, :s, :v, 't', 'f', "
                      "'text/html', 1, 'x', :key, 'system', :at)")
        rows = [("a1", "c1", "supplementary_agreement", "", 1, "amendment:c1:x", "2026-01-01 00:00:00"),
                ("a2", "c1", "supplementary_agreement", "", 2, "amendment:c1:y", "2026-02-01 00:00:00"),
                ("u1", "c1", "attachment", "drawing.pdf", 1, None, "2026-01-15 00:00:00")]
        with engine.begin() as conn:
            for i, c, k, ser, v, key, at in rows:
                conn.execute(insert, {"id": i, "c": c, "k": k, "s": ser, "v": v, "key": key, "at": at})
        upgrade(url)

        def now() -> list[tuple]:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.execute(text("SELECT id, series, version FROM documents ORDER BY id"))]

        assert now() == [("a1", "amendment:c1:x", 1), ("a2", "amendment:c1:y", 1), ("u1", "drawing.pdf", 1)]
        from alembic import command

        command.downgrade(alembic_config(url), "0016")
        assert now() == [("a1", "", 1), ("a2", "", 2), ("u1", "drawing.pdf", 1)]
    finally:
        engine.dispose()
        if cleanup:
            drop_pg_database(*cleanup)


# ============================================================================ who sees what
async def test_documents_and_communications_follow_contract_visibility(service):
    async with httpx.AsyncClient(base_url=service.base_url, timeout=60) as admin:
        cid = await new_contract(admin)
        other = await colleague(admin, service.base_url)
    li = await login(service.base_url, "li.wei")
    word = f"crane{uuid.uuid4().hex[:6]}"
    async with httpx.AsyncClient(base_url=service.url, timeout=60) as c:
        r = await upload(c, cid, fake_pdf(4096), "drawing.pdf", headers=li)
        assert r.status_code == 201, r.text
        doc = r.json()
        r = await c.post(f"/contracts/{cid}/communications", headers=li, json={
            "kind": "note", "body": f"Site needs a {word} for unloading", "attachments": [doc["id"]]})
        assert r.status_code == 201, r.text
        note = r.json()

        # A sales colleague (not on the contract): 404 on everything under it, nothing in search.
        for method, path in (("GET", f"/contracts/{cid}/documents"), ("GET", doc["download_url"]),
                             ("GET", doc["versions_url"]), ("GET", f"/contracts/{cid}/communications"),
                             ("GET", f"/contracts/{cid}/approvals")):
            body = problem(await c.request(method, path, headers=other), 404)
            assert body["detail"] == f"no contract with id {cid!r}"
        problem(await upload(c, cid, fake_pdf(4096), headers=other), 404)
        problem(await c.post(f"/contracts/{cid}/communications", headers=other, json={"kind": "note", "body": "x"}),
                404)
        page = (await c.get("/communications", params={"q": word}, headers=other)).json()
        assert page["total"] == 0 and page["items"] == []

        # The owner, their manager and finance (sees every contract) find it; finance may not upload.
        for who in ("li.wei", "zhang.min", "sun.li"):
            h = li if who == "li.wei" else await login(service.base_url, who)
            page = (await c.get("/communications", params={"q": word.upper()}, headers=h)).json()
            assert [i["id"] for i in page["items"]] == [note["id"]], who
            r = await c.get(doc["download_url"], headers=h)
            assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == doc["sha256"], who
        sun = await login(service.base_url, "sun.li")
        body = problem(await upload(c, cid, fake_pdf(4096), headers=sun), 403)
        assert "upload documents" in body["detail"]
        r = await c.post(f"/contracts/{cid}/communications", headers=sun,
                         json={"kind": "email_out", "subject": "Invoice", "body": "Invoice 1 sent"})
        assert r.status_code == 201 and r.json()["recorded_by"] == "sun.li"
        problem(await c.get("/communications", params={"q": word}), 401)  # no credentials


# ============================================================================ the communication log
async def test_communication_log_with_attachments_and_search(service):
    async with httpx.AsyncClient(base_url=service.base_url, timeout=60) as admin:
        cid = await new_contract(admin)
        elsewhere = await new_contract(admin)
    li = await login(service.base_url, "li.wei")
    tag = uuid.uuid4().hex[:8]
    async with httpx.AsyncClient(base_url=service.url, headers=li, timeout=60) as c:
        att = (await upload(c, cid, b"Minutes of the call\n", "minutes.txt", "text/plain")).json()
        foreign = (await upload(c, elsewhere, b"Other contract\n", "other.txt", "text/plain")).json()

        r = await c.post(f"/contracts/{cid}/communications", json={
            "kind": "call", "subject": f"Delivery window {tag}", "counterpart": "Mr Chen (Ningbo Precision)",
            "body": "Customer asks to move delivery by one week.", "occurred_at": "2024-11-20T10:00:00+08:00",
            "attachments": [att["id"], att["id"]]})
        assert r.status_code == 201, r.text
        call = r.json()
        assert call["recorded_by"] == "li.wei" and call["kind"] == "call"
        assert call["occurred_at"] == "2024-11-20T02:00:00Z"
        assert [a["id"] for a in call["attachments"]] == [att["id"]]
        assert call["attachments"][0]["download_url"] == att["download_url"]
        r = await c.post(f"/contracts/{cid}/communications", json={
            "kind": "email_in", "subject": f"RE: {tag}", "counterpart": "chen@ningbo.example",
            "body": "Confirmed 100%_ok"})
        assert r.status_code == 201, r.text
        mail = r.json()
        assert mail["occurred_at"] > call["occurred_at"]

        page = (await c.get(f"/contracts/{cid}/communications")).json()
        assert [i["id"] for i in page["items"]] == [mail["id"], call["id"]] and page["total"] == 2  # newest first
        page = (await c.get(f"/contracts/{cid}/communications", params={"q": "ningbo precision"})).json()
        assert [i["id"] for i in page["items"]] == [call["id"]]
        page = (await c.get(f"/contracts/{cid}/communications", params={"kind": "email_in"})).json()
        assert [i["id"] for i in page["items"]] == [mail["id"]]

        page = (await c.get("/communications", params={"q": tag.upper()})).json()
        assert {i["id"] for i in page["items"]} == {call["id"], mail["id"]}
        assert all(i["contract_id"] == cid for i in page["items"])
        page = (await c.get("/communications", params={"q": tag, "limit": 1, "offset": 1})).json()
        assert page["total"] == 2 and [i["id"] for i in page["items"]] == [call["id"]]
        # LIKE wildcards are matched literally.
        page = (await c.get("/communications", params={"q": "0%_o"})).json()
        assert [i["id"] for i in page["items"]] == [mail["id"]]
        assert (await c.get("/communications", params={"q": "_%"})).json()["total"] == 0

        problem(await c.get("/communications", params={"q": "a"}), 422)
        problem(await c.get("/communications", params={"q": " a "}), 422)
        body = problem(await c.post(f"/contracts/{cid}/communications", json={
            "kind": "note", "body": "see attached", "attachments": [foreign["id"]]}), 422)
        assert body["errors"][0]["field"] == "attachments"
        problem(await c.post(f"/contracts/{cid}/communications", json={
            "kind": "note", "body": "see attached", "attachments": ["nope"]}), 422)
        problem(await c.post(f"/contracts/{cid}/communications", json={"kind": "fax", "body": "x"}), 422)
        problem(await c.post(f"/contracts/{cid}/communications", json={"kind": "note", "body": "   "}), 422)
        problem(await c.post(f"/contracts/{cid}/communications", json={"kind": "note", "body": "x",
                                                                       "recorded_by": "someone"}), 422)
