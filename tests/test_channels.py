"""Notification channels against real servers: an aiosmtpd SMTP server, a stdlib HTTP receiver.

Nothing is mocked: mail goes over a real SMTP conversation on 127.0.0.1, webhooks over real
HTTP, and the receiver checks signatures with the same ``verify`` a customer's receiver would use.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from email import message_from_bytes
from email import policy as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from jinja2 import UndefinedError

from core.channels import PermanentDeliveryError, TransientDeliveryError
from core.channels import email as email_channel
from core.channels.email import close_idle_connections, send_email
from core.channels.render import RenderedMessage, render_notification
from core.channels.webhook import post_webhook, sign, verify
from core.settings import Settings

SECRET = "whsec_test_秘密"


# ------------------------------------------------------------------ helpers
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smtp_settings(port: int, **extra) -> Settings:
    values: dict[str, Any] = dict(
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_from="Contract Tracking <contracts@example.com>",
        smtp_starttls=False,
        smtp_username=None,
        smtp_password=None,
        smtp_timeout_seconds=5.0,
    )
    values.update(extra)
    return Settings(**values)


class SmtpHandler:
    """Collects envelopes; answers RCPT for the addresses in ``refuse`` with the given reply."""

    def __init__(self, refuse: dict[str, str] | None = None):
        self.refuse = {k.lower(): v for k, v in (refuse or {}).items()}
        self.envelopes: list[Any] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.refuse.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"


@contextmanager
def smtp_server(handler: SmtpHandler):
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller.port
    finally:
        controller.stop()


@contextmanager
def http_receiver(status: int = 200, delay: float = 0.0, headers: dict | None = None):
    """A real HTTP server in a thread; records each request and whether its signature verifies."""
    records: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            records.append(
                {
                    "path": self.path,
                    "headers": dict(self.headers.items()),
                    "body": body,
                    "verified": verify(
                        SECRET,
                        self.headers.get("X-Contracts-Timestamp", ""),
                        body,
                        self.headers.get("X-Contracts-Signature", ""),
                    ),
                }
            )
            if delay:
                time.sleep(delay)
            reply = b'{"ok":true}' if status < 300 else b"receiver says no"
            try:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
            except OSError:  # the client gave up (timeout test)
                pass

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks/contracts", records
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def parse(envelope):
    return message_from_bytes(envelope.content, policy=email_policy.default)


DUE = datetime(2026, 11, 30, 16, 30, tzinfo=timezone.utc)  # 2026-12-01 00:30 in Asia/Shanghai


def context(**overrides) -> dict:
    ctx = dict(
        contract_id="e35fd6cb2c7a4e5f",
        contract_title="华东机电年度采购合同",
        customer="华东机电有限公司",
        item_type="milestone",
        item_key="shipping",
        item_name="发货",
        owner_name="李伟",
        due_at=DUE,
        days=3,
        level=2,
        amount="400000.00",
        currency="CNY",
        cc=["王芳", "赵强"],
        link="http://127.0.0.1:8000/contracts/e35fd6cb2c7a4e5f",
    )
    ctx.update(overrides)
    return ctx


# ------------------------------------------------------------------ rendering
def test_render_escalation_zh():
    msg = render_notification("escalation", "zh", context(days=5, level=2))
    assert isinstance(msg, RenderedMessage)
    assert msg.subject == "【逾期提醒】华东机电年度采购合同 · 发货 已逾期 5 天"
    for part in (msg.text, msg.html):
        assert "发货" in part and "已逾期 5 天" in part
        assert "2026-12-01 00:30" in part  # Asia/Shanghai, not UTC's 2026-11-30 16:30
        assert "2026-11-30" not in part
        assert "第 2 级" in part
        assert "王芳、赵强" in part
        assert "400,000.00 CNY" in part
        assert "http://127.0.0.1:8000/contracts/e35fd6cb2c7a4e5f" in part
    assert msg.html.lstrip().startswith("<!DOCTYPE html>") and 'lang="zh-CN"' in msg.html


def test_render_reminder_en_and_locale_fallback():
    msg = render_notification("reminder", "en-US", context(item_type="installment", item_name="Second payment", days=3))
    assert msg.subject == "[Due soon] 华东机电年度采购合同 · Second payment is due in 3 days"
    for part in (msg.text, msg.html):
        assert "Second payment" in part and "due in 3 days" in part
        assert "2026-12-01 00:30" in part
    assert "Installment: Second payment (shipping)" in msg.text
    # An unknown locale falls back to English; zh-CN / zh_Hans normalise to zh.
    assert render_notification("reminder", "fr", context()).subject.startswith("[Due soon]")
    assert render_notification("reminder", "zh_Hans_CN", context()).subject.startswith("【到期提醒】")
    assert "明天到期" in render_notification("reminder", "zh-CN", context(days=1)).subject
    assert "is due today" in render_notification("reminder", "en", context(days=0)).subject


def test_render_handoff_both_locales():
    zh = render_notification("handoff", "zh", context(item_name="客户验收", previous_item_name="发货", days=7))
    assert "客户验收" in zh.subject
    assert "「发货」已完成" in zh.text and "「客户验收」" in zh.text and "还有 7 天" in zh.text
    assert "2026-12-01 00:30" in zh.html
    en = render_notification("handoff", "en", context(item_name="Acceptance", days=1))
    assert en.subject == "[Your turn] 华东机电年度采购合同 · Acceptance"
    assert "1 day from now" in en.text and "The previous step has been completed" in en.text


def test_render_escapes_html_but_not_text():
    title = '<script>alert("x")</script> & Co'
    msg = render_notification("escalation", "en", context(contract_title=title, cc=["<b>Eve</b>"]))
    assert "<script>" not in msg.html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; Co" in msg.html
    assert "&lt;b&gt;Eve&lt;/b&gt;" in msg.html
    assert title in msg.text and title in msg.subject  # plain text and headers are not HTML
    assert "\n" not in msg.subject


def test_render_rejects_bad_input():
    with pytest.raises(ValueError):
        render_notification("birthday", "zh", context())
    with pytest.raises(ValueError):
        render_notification("reminder", "zh", context(due_at=datetime(2026, 12, 1, 9, 0)))  # naive
    with pytest.raises(ValueError):
        render_notification("reminder", "zh", context(link="javascript:alert(1)"))
    ctx = context()
    del ctx["days"]
    with pytest.raises(UndefinedError):  # StrictUndefined: a missing field is an error, not a blank
        render_notification("reminder", "en", ctx)
    # Optional fields may be left out.
    ctx = context()
    for key in ("amount", "currency", "cc"):
        del ctx[key]
    msg = render_notification("escalation", "zh", ctx)
    assert "金额" not in msg.text and "抄送" not in msg.text


# ------------------------------------------------------------------ email
def test_email_delivered_with_both_parts_and_message_id():
    rendered = render_notification("escalation", "zh", context())
    handler = SmtpHandler()
    with smtp_server(handler) as port:
        send_email(
            smtp_settings(port),
            to=["李伟 <li.wei@example.com>"],
            cc=["wang.fang@example.com", "zhao.qiang@example.com", "LI.WEI@example.com"],
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            message_id="notif-e35fd6cb2c7a4e5f-shipping-esc-2",
            headers={"X-Contracts-Event-Id": "evt-42"},
        )
    assert len(handler.envelopes) == 1
    env = handler.envelopes[0]
    assert env.mail_from == "contracts@example.com"
    # To then Cc, a duplicate address (case-insensitive) only once.
    assert env.rcpt_tos == ["li.wei@example.com", "wang.fang@example.com", "zhao.qiang@example.com"]
    msg = parse(env)
    assert msg["Subject"] == "【逾期提醒】华东机电年度采购合同 · 发货 已逾期 3 天"
    assert msg["To"].addresses[0].addr_spec == "li.wei@example.com"
    assert msg["To"].addresses[0].display_name == "李伟"
    assert [a.addr_spec for a in msg["Cc"].addresses] == ["wang.fang@example.com", "zhao.qiang@example.com"]
    assert msg["Message-ID"] == "<notif-e35fd6cb2c7a4e5f-shipping-esc-2@contracts>"
    assert msg["X-Contracts-Event-Id"] == "evt-42"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg.get_content_type() == "multipart/alternative"
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text.get_content_charset() == "utf-8" and html.get_content_charset() == "utf-8"
    # Text parts travel in canonical form (CRLF line breaks, RFC 2045) inside base64/QP.
    assert text.get_content().replace("\r\n", "\n").strip() == rendered.text.strip()
    assert html.get_content().replace("\r\n", "\n").strip() == rendered.html.strip()
    assert "已逾期 3 天" in text.get_content() and "<!DOCTYPE html>" in html.get_content()
    # 7-bit safe on the wire: no reliance on the server's 8BITMIME.
    assert all(b < 0x80 for b in env.content)


def test_email_recipient_refused_550_is_permanent():
    handler = SmtpHandler(refuse={"nobody@example.com": "550 5.1.1 <nobody@example.com>: user unknown"})
    with smtp_server(handler) as port, pytest.raises(PermanentDeliveryError) as info:
        send_email(
            smtp_settings(port), to=["nobody@example.com"], cc=[], subject="s", text="t", html="<p>t</p>",
            message_id="m-550",
        )
    assert info.value.code == 550
    assert handler.envelopes == []


def test_email_partly_refused_reports_who_got_it():
    handler = SmtpHandler(refuse={"gone@example.com": "550 5.1.1 user unknown"})
    with smtp_server(handler) as port, pytest.raises(PermanentDeliveryError) as info:
        send_email(
            smtp_settings(port), to=["li.wei@example.com"], cc=["gone@example.com"], subject="s", text="t",
            html="<p>t</p>", message_id="m-partial",
        )
    assert info.value.delivered == ["li.wei@example.com"]
    assert list(info.value.refused) == ["gone@example.com"]
    assert [e.rcpt_tos for e in handler.envelopes] == [["li.wei@example.com"]]


def test_email_recipient_deferred_451_is_transient():
    handler = SmtpHandler(refuse={"busy@example.com": "451 4.3.0 Try again later"})
    with smtp_server(handler) as port, pytest.raises(TransientDeliveryError) as info:
        send_email(
            smtp_settings(port), to=["busy@example.com"], cc=[], subject="s", text="t", html="<p>t</p>",
            message_id="m-451",
        )
    assert info.value.code == 451


def test_email_connection_refused_is_transient():
    with pytest.raises(TransientDeliveryError):
        send_email(
            smtp_settings(free_port()), to=["li.wei@example.com"], cc=[], subject="s", text="t", html="<p>t</p>",
            message_id="m-refused",
        )


def test_email_silent_server_times_out_transient():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:  # accepts, never greets
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        started = time.monotonic()
        with pytest.raises(TransientDeliveryError):
            send_email(
                smtp_settings(silent.getsockname()[1], smtp_timeout_seconds=0.5),
                to=["li.wei@example.com"], cc=[], subject="s", text="t", html="<p>t</p>", message_id="m-timeout",
            )
        assert time.monotonic() - started < 5


def test_email_invalid_address_or_header_is_permanent():
    handler = SmtpHandler()
    with smtp_server(handler) as port:
        for to in (["not-an-address"], ["a@b.com\r\nBcc: evil@example.com"], []):
            with pytest.raises(PermanentDeliveryError):
                send_email(smtp_settings(port), to=to, cc=[], subject="s", text="t", html="<p>t</p>", message_id="m")
        with pytest.raises(PermanentDeliveryError):
            send_email(
                smtp_settings(port), to=["li.wei@example.com"], cc=[], subject="s", text="t", html="<p>t</p>",
                message_id="m", headers={"X-Note": "a\r\nBcc: evil@example.com"},
            )
    assert handler.envelopes == []


# ------------------------------------------------------------------ email: connection reuse
class CountingHandler(SmtpHandler):
    """Records which connection (the client's address) carried each message; ``drop`` says what
    to do to the connection around the n-th message (1-based): ``"after"`` closes it once the
    message is accepted (the server dropping an idle client), ``"during"`` aborts it right after
    the message arrived, before the reply (the client cannot know whether it was accepted)."""

    def __init__(self, drop: dict[int, str] | None = None):
        super().__init__()
        self.drop = drop or {}
        self.peers: list[Any] = []
        self.ids: list[str] = []

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        self.peers.append(session.peer)
        self.ids.append(parse(envelope)["Message-ID"])
        how = self.drop.get(len(self.envelopes))
        if how == "during":
            server.transport.abort()
        elif how == "after":
            asyncio.get_running_loop().call_later(0.02, server.transport.close)
        return "250 Message accepted for delivery"


def send_plain(settings: Settings, message_id: str) -> None:
    send_email(settings, to=["li.wei@example.com"], cc=[], subject="s", text="t", html="<p>t</p>",
               message_id=message_id)


@pytest.fixture
def no_idle_connections():
    yield
    close_idle_connections()


def test_email_reuses_one_connection(no_idle_connections):
    handler = CountingHandler()
    with smtp_server(handler) as port:
        for k in range(3):
            send_plain(smtp_settings(port), f"m-reuse-{k}")
    assert len(handler.envelopes) == 3
    assert len(set(handler.peers)) == 1, handler.peers


def test_email_pool_size_0_opens_a_connection_per_message(no_idle_connections):
    handler = CountingHandler()
    with smtp_server(handler) as port:
        for k in range(2):
            send_plain(smtp_settings(port, smtp_pool_size=0), f"m-nopool-{k}")
    assert len(set(handler.peers)) == 2


@pytest.mark.parametrize("probe", [False, True], ids=["retried-on-a-new-connection", "noop-probe"])
def test_email_connection_dropped_while_idle_still_delivers_once(no_idle_connections, monkeypatch, probe):
    """The server closed the pooled connection after the first message: the second goes out on a
    new connection, exactly once, whether the NOOP probe (after a long idle) or MAIL finds it."""
    if probe:
        monkeypatch.setattr(email_channel, "_PROBE_AFTER_SECONDS", 0.0)
    handler = CountingHandler(drop={1: "after"})
    with smtp_server(handler) as port:
        send_plain(smtp_settings(port), "m-drop-1")
        time.sleep(0.3)  # the server has closed it by now
        send_plain(smtp_settings(port), "m-drop-2")
        send_plain(smtp_settings(port), "m-drop-3")
    assert handler.ids == ["<m-drop-1@contracts>", "<m-drop-2@contracts>", "<m-drop-3@contracts>"]
    assert handler.peers[0] != handler.peers[1] == handler.peers[2]


def test_email_connection_lost_during_data_is_not_resent(no_idle_connections):
    """Once the message is handed over, a lost connection is reported (transient), never resent on
    a new connection: the server may have it already."""
    handler = CountingHandler(drop={2: "during"})
    with smtp_server(handler) as port:
        send_plain(smtp_settings(port), "m-data-1")
        with pytest.raises(TransientDeliveryError):
            send_plain(smtp_settings(port), "m-data-2")
        send_plain(smtp_settings(port), "m-data-3")
    assert handler.ids == ["<m-data-1@contracts>", "<m-data-2@contracts>", "<m-data-3@contracts>"]
    assert handler.peers[0] == handler.peers[1] != handler.peers[2]


def test_email_refusal_on_a_pooled_connection_is_still_permanent(no_idle_connections):
    handler = SmtpHandler(refuse={"nobody@example.com": "550 5.1.1 user unknown"})
    with smtp_server(handler) as port:
        send_plain(smtp_settings(port), "m-ok")
        with pytest.raises(PermanentDeliveryError) as info:
            send_email(smtp_settings(port), to=["nobody@example.com"], cc=[], subject="s", text="t",
                       html="<p>t</p>", message_id="m-550-pooled")
        send_plain(smtp_settings(port), "m-ok-2")
    assert info.value.code == 550
    assert len(handler.envelopes) == 2


# ------------------------------------------------------------------ webhook
def test_sign_and_verify():
    body = '{"event":"milestone.overdue","title":"合同"}'.encode()
    now = 1_800_000_000
    ts = str(now)
    sig = sign(SECRET, ts, body)
    assert len(sig) == 64 and int(sig, 16) >= 0
    assert verify(SECRET, ts, body, f"sha256={sig}", now=now)
    assert verify(SECRET, ts, body, sig, now=now + 299)
    assert not verify(SECRET, ts, body + b" ", f"sha256={sig}", now=now)  # tampered body
    assert not verify("other-secret", ts, body, f"sha256={sig}", now=now)
    assert not verify(SECRET, str(now + 1), body, f"sha256={sig}", now=now)  # timestamp is signed too
    assert not verify(SECRET, ts, body, f"sha256={sig}", now=now + 301)  # stale
    assert not verify(SECRET, ts, body, f"sha256={sig}", now=now - 301)  # from the future
    assert not verify(SECRET, "yesterday", body, f"sha256={sig}", now=now)
    assert not verify(SECRET, ts, body, "sha256=zz", now=now)


def test_webhook_delivered_signed_and_verified():
    payload = {"event": "milestone.overdue", "contract_title": "华东机电年度采购合同", "days": 3, "amount": "400000.00"}
    with http_receiver(status=200) as (url, records):
        status = post_webhook(
            Settings(webhook_timeout_seconds=5), url, SECRET, payload, event_id="evt-e35fd6cb2c7a4e5f-17"
        )
    assert status == 200
    assert len(records) == 1
    rec = records[0]
    assert rec["verified"] is True
    assert rec["path"] == "/hooks/contracts"
    assert rec["headers"]["Content-Type"] == "application/json"
    assert rec["headers"]["X-Contracts-Event-Id"] == "evt-e35fd6cb2c7a4e5f-17"
    ts = rec["headers"]["X-Contracts-Timestamp"]
    assert abs(int(ts) - time.time()) < 60
    assert rec["headers"]["X-Contracts-Signature"] == "sha256=" + sign(SECRET, ts, rec["body"])
    # Compact UTF-8 JSON, Chinese kept as is.
    assert rec["body"] == json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    assert "华东机电".encode() in rec["body"]
    assert json.loads(rec["body"]) == payload
    # What the receiver got fails verification once tampered with, or once it is stale.
    sig = rec["headers"]["X-Contracts-Signature"]
    assert not verify(SECRET, ts, rec["body"].replace(b'"days":3', b'"days":0'), sig)
    assert not verify(SECRET, ts, rec["body"], sig, now=int(ts) + 3600)


def test_webhook_503_is_transient_with_retry_after():
    with http_receiver(status=503, headers={"Retry-After": "30"}) as (url, records), \
            pytest.raises(TransientDeliveryError) as info:
        post_webhook(Settings(webhook_timeout_seconds=5), url, SECRET, {"a": 1}, event_id="evt-503")
    assert info.value.code == 503 and info.value.retry_after == 30.0
    assert len(records) == 1 and records[0]["verified"]


def test_webhook_429_is_transient():
    with http_receiver(status=429) as (url, _records), pytest.raises(TransientDeliveryError):
        post_webhook(Settings(webhook_timeout_seconds=5), url, SECRET, {"a": 1}, event_id="evt-429")


def test_webhook_400_is_permanent():
    with http_receiver(status=400) as (url, records), pytest.raises(PermanentDeliveryError) as info:
        post_webhook(Settings(webhook_timeout_seconds=5), url, SECRET, {"a": 1}, event_id="evt-400")
    assert info.value.code == 400 and "receiver says no" in str(info.value)
    assert len(records) == 1


def test_webhook_connection_refused_is_transient():
    url = f"http://127.0.0.1:{free_port()}/hooks"
    with pytest.raises(TransientDeliveryError):
        post_webhook(Settings(webhook_timeout_seconds=5), url, SECRET, {"a": 1}, event_id="evt-refused")


def test_webhook_timeout_is_transient():
    with http_receiver(status=200, delay=2.0) as (url, records), pytest.raises(TransientDeliveryError):
        post_webhook(Settings(webhook_timeout_seconds=0.3), url, SECRET, {"a": 1}, event_id="evt-slow")
    assert len(records) == 1


def test_webhook_bad_url_is_permanent():
    for url in ("ftp://example.com/hook", "not a url", ""):
        with pytest.raises(PermanentDeliveryError):
            post_webhook(Settings(), url, SECRET, {"a": 1}, event_id="evt-bad-url")


def test_email_dev_default_sender():
    """The default SMTP_FROM (contracts@localhost) is a usable sender."""
    handler = SmtpHandler()
    with smtp_server(handler) as port:
        settings = Settings(smtp_host="127.0.0.1", smtp_port=port, smtp_timeout_seconds=5)
        rendered = render_notification("reminder", "en", context())
        send_email(settings, to=["owner@localhost"], cc=[], subject=rendered.subject, text=rendered.text,
                   html=rendered.html, message_id="m-dev")
    assert handler.envelopes[0].mail_from == "contracts@localhost"
    assert parse(handler.envelopes[0])["Subject"] == rendered.subject
