"""The dashboard in a real headless Chromium (Debian's /usr/bin/chromium, driven over the DevTools
protocol by playwright's client; no browser is downloaded) against the running service: real
uvicorn, Temporal dev server and worker, SQLite.

A person picks who they are, opens the contract list, filters overdue contracts, opens one and
sees its timeline (planned vs actual per milestone, payments, amendments, escalations), then opens
the analytics page and finds rendered charts.  Screenshots go to test-artifacts/screenshots/.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from core.demo_data import HISTORY_PREFIX, LIVE_PREFIX, seed_history, seed_live
from models.db import make_engine, make_session_factory
from tests.conftest import ARTIFACTS, IN_CI
from tests.helpers import DEMO_PASSWORD, contract_request, wait_for

pytestmark = pytest.mark.devserver

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-dev-shm-usage"]
SHOTS = ARTIFACTS / "screenshots"


def _chromium() -> str:
    path = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if not path:
        if IN_CI:
            pytest.fail("chromium is required in CI (.ci/run installs Debian's package) and is missing")
        pytest.skip("no chromium: apt-get install -y chromium")
    return path


@pytest.fixture
async def browser():
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.async_api import async_playwright

    executable = _chromium()
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=executable, headless=True, args=FLAGS)
        try:
            yield b
        finally:
            await b.close()


async def seeded(service) -> dict[str, str]:
    """Demo history in the read model and a few live contracts through the API, one overdue."""
    engine = make_engine(service.settings.database_url)
    try:
        await asyncio.to_thread(seed_history, make_session_factory(engine), n=80, seed=3)
    finally:
        engine.dispose()
    await asyncio.to_thread(seed_live, service.base_url, count=4, concurrency=2)
    # DEMO-LIVE-00 is stuck at order review, due in the past: overdue as soon as its workflow starts.
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as c:
        target = None
        for _ in range(60):
            r = await c.get("/contracts", params={"overdue": "true", "limit": 500})
            target = next((x for x in r.json()["items"] if x["external_id"] == f"{LIVE_PREFIX}00"), None)
            if target:
                break
            await asyncio.sleep(0.5)
        assert target, "the overdue demo contract did not show up as overdue"
        live = [target]
    return {"overdue_live": live[0]["id"]}


async def shot(page, name: str) -> None:
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def test_a_person_uses_the_dashboard(api_service, browser):
    ids = await seeded(api_service)
    base = api_service.url  # a browser carries no key: the person logs in
    context = await browser.new_context(viewport={"width": 1360, "height": 900}, locale="en-US")
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    # 1. Log in: a page asked for without a session goes to the login form, and back after it.
    #    chen.jing heads sales: she sees her department's contracts and the analytics.
    await page.goto(f"{base}/ui/tasks")
    assert "/ui/login" in page.url
    await page.fill("#username", "chen.jing")
    await page.fill("#password", "wrong password")
    await page.click("#login-submit")
    await page.wait_for_selector("#login-error")
    await shot(page, "01-login")
    await page.fill("#username", "chen.jing")
    await page.fill("#password", DEMO_PASSWORD)
    await page.click("#login-submit")
    await page.wait_for_url("**/ui/tasks")
    assert await page.get_attribute("#current-user", "data-user") == "chen.jing"
    await shot(page, "02-my-tasks")

    # 2. The contract list, then only the overdue ones.
    await page.click("nav >> text=Contracts")
    await page.wait_for_selector("table#contracts tr.contract-row")
    total = int(await page.inner_text("#total"))
    assert total >= 50
    await shot(page, "03-contracts")
    await page.check("#filter-overdue")
    await page.click("#apply-filters")
    await page.wait_for_url("**overdue=true**")
    rows = page.locator("table#contracts tr.contract-row")
    n = await rows.count()
    assert 1 <= n < total
    for i in range(n):  # every row is an overdue one, and is highlighted as such
        row = rows.nth(i)
        assert int(await row.get_attribute("data-overdue")) > 0
        assert "overdue" in (await row.get_attribute("class"))
    await shot(page, "04-contracts-overdue")

    # 3. Open the live overdue contract: its timeline, documents, link to the Temporal UI.
    await page.click(f"tr.contract-row[data-id='{ids['overdue_live']}'] a.contract-link")
    await page.wait_for_selector("svg#timeline")
    assert await page.inner_text("#state-source") != ""
    assert "live" in await page.get_attribute("#state-source", "class")
    assert await page.locator("svg#timeline g.tl-row").count() == 6  # the goods-sale stages
    assert await page.locator("svg#timeline g.tl-row.state-overdue").count() >= 1
    assert await page.locator("svg#timeline line.now").count() == 1
    href = await page.get_attribute("#temporal-link", "href")
    assert href.endswith(f"/workflows/contract-{ids['overdue_live']}")
    assert await page.locator("table#milestones tr.overdue").count() >= 1
    await shot(page, "05-contract-live")

    # A contract of the past (history in the read model, no workflow): the same page from the snapshot,
    # with payments and escalations on its timeline.
    # (Searched by the history's id prefix: other tests' completed contracts, which have workflows,
    # may fill the first page.)
    await page.goto(f"{base}/ui/contracts?status=completed&q={HISTORY_PREFIX}")
    await page.click(f"table#contracts tr.contract-row[data-id^='{HISTORY_PREFIX}'] a.contract-link >> nth=0")
    await page.wait_for_selector("svg#timeline g.tl-row")
    assert "snapshot" in await page.get_attribute("#state-source", "class")
    assert await page.locator("svg#timeline g.payment").count() >= 1
    await shot(page, "06-contract-history")

    # 4. The overdue board.
    await page.click("nav >> text=Overdue board")
    await page.wait_for_selector("#board .column")
    assert int(await page.inner_text("#overdue-count")) >= 1
    await shot(page, "07-overdue-board")

    # 5. Analytics: every chart rendered (ECharts draws SVG paths), in English and in Chinese.
    await page.goto(f"{base}/ui/analytics?period=all")
    await page.wait_for_selector("[data-chart='stages'][data-rendered='1'] svg path", state="attached", timeout=15000)
    for name in ("stages", "ontime", "bottlenecks", "ageing", "cycle", "satisfaction"):
        assert await page.get_attribute(f"[data-chart='{name}']", "data-rendered") == "1", name
        assert await page.locator(f"[data-chart='{name}'] svg path").count() > 3, name
    assert await page.locator("table#bottlenecks tbody tr").count() >= 3
    await shot(page, "08-analytics")
    await page.click("a.lang")
    await page.wait_for_selector("[data-chart='stages'][data-rendered='1'] svg path", state="attached")
    assert "分析" in await page.inner_text("nav")
    await shot(page, "09-analytics-zh")

    # 6. The quarterly review and its CSV.
    await page.click("nav >> text=季度回顾")
    await page.wait_for_selector("table#report tbody tr")
    assert await page.locator("table#report tbody tr").count() > 10
    csv_href = await page.get_attribute("#csv-link", "href")
    assert csv_href.startswith("/analytics/reports/quarterly.csv")
    await shot(page, "10-quarterly")
    cookies = {c["name"]: c["value"] for c in await context.cookies()}
    async with httpx.AsyncClient(base_url=base, cookies=cookies) as c:  # the same session, outside the browser
        r = await c.get(csv_href)
        assert r.status_code == 200 and "section,metric" in r.text

    assert errors == [], errors  # no script error on any page
    await context.close()


async def test_pages_without_a_browser(api_service):
    """Plain HTTP: languages, the user cookie, a bad filter, an unknown contract, nothing in the OpenAPI."""
    async with httpx.AsyncClient(base_url=api_service.base_url, follow_redirects=False) as c:
        r = await c.get("/ui/")
        assert r.status_code == 303 and r.headers["location"] == "/ui/contracts"
        r = await c.get("/ui/contracts", headers={"accept-language": "en-GB,en;q=0.9"})
        assert r.status_code == 200 and "Contracts" in r.text and 'lang="en"' in r.text
        r = await c.get("/ui/contracts", headers={"accept-language": "zh-CN,zh;q=0.9,en;q=0.5"})
        assert 'lang="zh-CN"' in r.text and "合同" in r.text
        r = await c.get("/ui/contracts?lang=en", headers={"accept-language": "zh-CN"})
        assert 'lang="en"' in r.text and r.cookies.get("ui_lang") == "en"
    async with httpx.AsyncClient(base_url=api_service.url, follow_redirects=False) as anonymous:
        r = await anonymous.get("/ui/tasks", headers={"accept": "text/html"})
        assert r.status_code == 303 and r.headers["location"] == "/ui/login?next=/ui/tasks"
        r = await anonymous.get("/ui/tasks", headers={"accept": "application/json"})
        assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
        r = await anonymous.post("/ui/login", data={"username": "sun.li", "password": "nope", "next": "/ui/tasks"})
        assert r.status_code == 401 and 'id="login-error"' in r.text
        r = await anonymous.post("/ui/login", data={"username": "sun.li", "password": DEMO_PASSWORD,
                                                     "next": "/ui/tasks"})
        assert r.status_code == 303 and r.headers["location"] == "/ui/tasks"
        session = r.cookies.get("ct_session")
        assert session
        r = await anonymous.get("/ui/tasks", cookies={"ct_session": session})
        assert r.status_code == 200 and 'data-user="sun.li"' in r.text
        # The session cookie reads, but never writes through the API (no cross-site request forgery).
        r = await anonymous.get("/auth/me", cookies={"ct_session": session})
        assert r.status_code == 200 and r.json()["id"] == "sun.li"
        r = await anonymous.post("/contracts/x/payments", cookies={"ct_session": session}, json={})
        assert r.status_code == 401
        r = await anonymous.get("/ui/tasks", cookies={"ct_session": "forged"}, headers={"accept": "text/html"})
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
        r = await anonymous.post("/ui/login", data={"username": "sun.li", "password": DEMO_PASSWORD,
                                                     "next": "https://evil.example/"})
        assert r.status_code == 303 and r.headers["location"] == "/ui/contracts"  # never an open redirect
        # A sales person is refused the analytics with a page saying why, and sees no link to them.
        r = await anonymous.post("/ui/login", data={"username": "li.wei", "password": DEMO_PASSWORD})
        li = r.cookies["ct_session"]
        r = await anonymous.get("/ui/analytics", cookies={"ct_session": li}, headers={"accept": "text/html"})
        assert r.status_code == 403 and r.headers["content-type"].startswith("text/html")
        assert "may not read analytics" in r.text
        r = await anonymous.get("/ui/contracts", cookies={"ct_session": li})
        assert r.status_code == 200 and 'href="/ui/analytics"' not in r.text
        r = await anonymous.get("/ui/logout", cookies={"ct_session": session})
        assert r.status_code == 303 and 'ct_session=""' in r.headers["set-cookie"]
        # ...and the token is over, not only the cookie: a copy of it opens nothing, as cookie or bearer.
        r = await anonymous.get("/ui/tasks", cookies={"ct_session": session}, headers={"accept": "text/html"})
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
        r = await anonymous.get("/auth/me", headers={"authorization": f"Bearer {session}"})
        assert r.status_code == 401 and "logged out" in r.json()["detail"]
        r = await anonymous.get("/ui/contracts", cookies={"ct_session": li})  # li.wei's own session goes on
        assert r.status_code == 200
    async with httpx.AsyncClient(base_url=api_service.base_url, follow_redirects=False) as c:
        r = await c.get("/ui/analytics?period=2026-Q9")
        assert r.status_code == 422 and 'id="filter-error"' in r.text
        for bad in ("/ui/contracts?overdue=maybe", "/ui/contracts?page=-1"):  # a page too, not JSON
            r = await c.get(bad, headers={"accept": "text/html"})
            assert r.status_code == 422 and r.headers["content-type"].startswith("text/html"), (bad, r.text[:200])
        r = await c.get("/ui/contracts/does-not-exist")
        assert r.status_code == 404 and "does-not-exist" in r.text
        # A sent reminder is in the event list with no sequence number: shown as a dash, not "None".
        signed = datetime.now(timezone.utc) - timedelta(days=10)  # order review is 8 days late: caught up at once
        r = await c.post("/contracts", json=contract_request(signed, end_date=(signed + timedelta(days=365)).isoformat()))
        cid = r.json()["id"]

        async def reminded():
            events = (await c.get(f"/contracts/{cid}/events")).json()
            return any(e["type"] == "notification.reminder" and e["seq"] is None for e in events) or None

        await wait_for(reminded)
        page = await c.get(f"/ui/contracts/{cid}", headers={"accept": "text/html"})
        assert page.status_code == 200 and "<td>None</td>" not in page.text and "<td>—</td>" in page.text
        r = await c.get("/static/vendor/echarts/echarts.common.min.js")
        assert r.status_code == 200 and len(r.content) > 100_000
        doc = (await c.get("/openapi.json")).json()
        assert not [path for path in doc["paths"] if path.startswith(("/ui", "/static"))]
