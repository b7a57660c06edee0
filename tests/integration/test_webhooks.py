"""Signed webhooks end to end, on SQLite and PostgreSQL, against real HTTP receivers that the
tests start on the loopback interface (reachable only because 127.0.0.1 is allowlisted)."""

from __future__ import annotations

import datetime as dt
import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from standardwebhooks.webhooks import Webhook
from typer.testing import CliRunner

from closedloop.act.actions import ActContext, Trigger
from closedloop.act.webhooks import Endpoints, SsrfGuard, WebhookAction, WebhookSender, enqueue
from closedloop.act.webhooks.action import WebhookParams
from closedloop.runtime import Runtime
from closedloop.settings import Settings
from closedloop.store import models
from closedloop.store.jobs import Job
from tests.conftest import Tenant

HUGE = 1 << 30  # what the "huge" receiver claims to send: 1 GiB


@dataclass
class Reply:
    """One scripted answer of the receiver."""

    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    huge: bool = False


@dataclass
class Seen:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A real HTTP server on 127.0.0.1 (free port) that records requests and answers from a
    script (the last reply repeats)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[Seen] = []
        self.script: list[Reply] = [Reply()]
        self.huge_bytes_written = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver.lock:
                    receiver.requests.append(Seen(self.path, dict(self.headers.items()), body))
                    n = len(receiver.requests)
                    reply = receiver.script[min(n, len(receiver.script)) - 1]
                time.sleep(reply.delay)
                try:
                    self.send_response(reply.status)
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    size = HUGE if reply.huge else len(reply.body)
                    self.send_header("content-length", str(size))
                    self.end_headers()
                    if not reply.huge:
                        self.wfile.write(reply.body)
                        return
                    chunk = b"x" * 65536
                    while receiver.huge_bytes_written < HUGE:
                        self.wfile.write(chunk)
                        receiver.huge_bytes_written += len(chunk)
                except OSError:  # the sender hung up: what a bounded read does
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # type: ignore[method-assign]
        self.port = self.server.server_address[1]
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Loopback allowlisted; small backoff, attempts and timeout so that no test waits."""
    return settings.with_overrides(
        webhook_allow=["127.0.0.1"],
        webhook_backoff_seconds=0.01,
        webhook_max_attempts=3,
        webhook_timeout_seconds=0.3,
        webhook_max_response_bytes=4096,
    )


def _create(
    runtime: Runtime, tenant: Tenant, url: str, *, name: str = "hook", format: str = "standard"
) -> str:
    """An endpoint allowed to reach the allowlisted loopback; its secret."""
    endpoints = Endpoints(runtime.engine, SsrfGuard(runtime.settings.webhook_allow))
    ep = endpoints.create(tenant.project_id, name, url, format=format, allow_private=True)
    return ep.secret


def _enqueue(runtime: Runtime, tenant: Tenant, data: dict[str, Any] | None = None) -> int:
    with runtime.engine.begin() as conn:
        return enqueue(conn, tenant.project_id, "hook", "closedloop.test", data or {"n": 1})


def _row(runtime: Runtime, delivery_id: int) -> Any:
    d = models.webhook_deliveries
    with runtime.engine.connect() as conn:
        return conn.execute(sa.select(d).where(d.c.id == delivery_id)).one()


def _drain(sender: WebhookSender, runtime: Runtime, delivery_id: int, rounds: int = 40) -> Any:
    """Run the sender until the delivery is delivered or dead (backoff is ~10 ms here)."""
    for _ in range(rounds):
        sender.run()
        row = _row(runtime, delivery_id)
        if row.state in ("delivered", "dead"):
            return row
        time.sleep(0.03)
    return _row(runtime, delivery_id)


def _verify(secret: str, seen: Seen) -> Any:
    return Webhook(secret).verify(seen.body, seen.headers)


def test_a_delivery_is_signed_with_standard_webhooks(
    runtime: Runtime, tenant: Tenant, receiver: Receiver
) -> None:
    secret = _create(runtime, tenant, receiver.url)
    delivery_id = _enqueue(runtime, tenant, {"rule": "r", "when": dt.datetime(2026, 1, 1)})
    assert WebhookSender(runtime.engine, runtime.settings).run() == 1
    row = _row(runtime, delivery_id)
    assert (row.state, row.attempts, row.last_status) == ("delivered", 1, 200)
    [seen] = receiver.requests
    envelope = _verify(secret, seen)
    assert envelope["type"] == "closedloop.test"
    assert envelope["data"] == {"rule": "r", "when": "2026-01-01T00:00:00"}
    assert seen.headers["webhook-id"] == row.msg_id
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + "A" * 32).verify(seen.body, seen.headers)


def _loopback_names(host: str, port: int) -> list[str]:
    """A resolver only the guard knows: the system cannot resolve these names at all."""
    if host in ("hooks.example", "other.example"):
        return ["127.0.0.1"]
    raise OSError(f"{host}: unknown to the test resolver")


def test_the_sender_connects_to_the_checked_address_and_sends_the_original_host(
    runtime: Runtime, tenant: Tenant, receiver: Receiver
) -> None:
    """The name resolves only through the guard's resolver: the request arrives only because
    the transport connects to the address the guard checked, with the URL's Host header."""
    guard = SsrfGuard(["127.0.0.1"], resolver=_loopback_names)
    url = f"http://hooks.example:{receiver.port}/hook"
    Endpoints(runtime.engine, guard).create(tenant.project_id, "hook", url, allow_private=True)
    delivery_id = _enqueue(runtime, tenant)
    sender = WebhookSender(runtime.engine, runtime.settings, guard=guard)
    sender(Job(id=1, kind="webhooks", project_id=None, payload={}, attempts=1, max_attempts=1,
               leased_by="t"))  # fmt: skip
    assert _row(runtime, delivery_id).state == "delivered"
    [seen] = receiver.requests
    assert seen.headers["Host"] == f"hooks.example:{receiver.port}"


def _certificates(tmp: Path) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for hooks.example: (ca, cert, key) PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "closedloop test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hooks.example")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("hooks.example")]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def test_tls_to_the_pinned_address_checks_the_certificate_of_the_host_name(
    runtime: Runtime, tenant: Tenant, tmp_path: Path
) -> None:
    ca, cert, key = _certificates(tmp_path)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    receiver = Receiver(tls=server_tls)
    try:
        guard = SsrfGuard(["127.0.0.1"], resolver=_loopback_names)
        endpoints = Endpoints(runtime.engine, guard)
        for name in ("hooks", "other"):
            url = f"https://{name}.example:{receiver.port}/hook"
            endpoints.create(tenant.project_id, name, url, allow_private=True)
        with runtime.engine.begin() as conn:
            good = enqueue(conn, tenant.project_id, "hooks", "closedloop.test", {})
            bad = enqueue(conn, tenant.project_id, "other", "closedloop.test", {})
        trust = ssl.create_default_context(cafile=str(ca))
        WebhookSender(runtime.engine, runtime.settings, guard=guard, ssl_context=trust).run()
        assert _row(runtime, good).state == "delivered"
        refused = _row(runtime, bad)  # the certificate is for hooks.example, not other.example
        assert refused.state == "failed" and "certificate" in refused.last_error.lower()
        assert [s.headers["Host"] for s in receiver.requests] == [f"hooks.example:{receiver.port}"]
    finally:
        receiver.close()


def test_without_the_allowlist_the_loopback_receiver_is_refused_and_never_hit(
    runtime: Runtime, tenant: Tenant, receiver: Receiver
) -> None:
    _create(runtime, tenant, receiver.url)
    delivery_id = _enqueue(runtime, tenant)
    strict = runtime.settings.with_overrides(webhook_allow=[])
    row = _drain(WebhookSender(runtime.engine, strict), runtime, delivery_id)
    assert row.state == "dead" and row.attempts == 3
    assert "SSRF" in row.last_error and "loopback" in row.last_error
    assert receiver.requests == []


def test_two_failures_then_success_is_delivered_with_one_message_id(
    runtime: Runtime, tenant: Tenant, receiver: Receiver
) -> None:
    receiver.script = [Reply(500, b"boom"), Reply(500, b"boom"), Reply(200)]
    secret = _create(runtime, tenant, receiver.url)
    delivery_id = _enqueue(runtime, tenant)
    row = _drain(WebhookSender(runtime.engine, runtime.settings), runtime, delivery_id)
    assert (row.state, row.attempts, row.last_status) == ("delivered", 3, 200)
    assert len(receiver.requests) == 3
    assert {s.headers["webhook-id"] for s in receiver.requests} == {row.msg_id}
    for seen in receiver.requests:
        _verify(secret, seen)


async def test_a_dead_delivery_is_listed_and_delivered_after_a_retry(
    runtime: Runtime, tenant: Tenant, receiver: Receiver, client: httpx.AsyncClient
) -> None:
    receiver.script = [Reply(500, b"down")]
    _create(runtime, tenant, receiver.url)
    delivery_id = _enqueue(runtime, tenant)
    sender = WebhookSender(runtime.engine, runtime.settings)
    assert _drain(sender, runtime, delivery_id).state == "dead"
    assert len(receiver.requests) == 3
    dead = await client.get("/v1/webhooks/deliveries?state=dead", headers=tenant.headers())
    assert dead.status_code == 200
    [listed] = dead.json()["deliveries"]
    assert listed["id"] == delivery_id and listed["last_status"] == 500
    assert "down" in listed["last_error"] and listed["endpoint"] == "hook"

    receiver.script = [Reply(200)]
    again = await client.post(
        f"/v1/webhooks/deliveries/{delivery_id}/retry", headers=tenant.headers()
    )
    assert again.status_code == 200 and again.json()["state"] == "pending"
    assert sender.run() == 1
    assert _row(runtime, delivery_id).state == "delivered"
    twice = await client.post(
        f"/v1/webhooks/deliveries/{delivery_id}/retry", headers=tenant.headers()
    )
    assert twice.status_code == 400 and twice.json()["field"] == "id"


def test_a_retry_after_header_delays_the_next_attempt(
    runtime: Runtime, tenant: Tenant, receiver: Receiver
) -> None:
    receiver.script = [Reply(429, b"slow down", {"retry-after": "120"})]
    _create(runtime, tenant, receiver.url)
    delivery_id = _enqueue(runtime, tenant)
    WebhookSender(runtime.engine, runtime.settings).run()
    row = _row(runtime, delivery_id)
    assert row.state == "failed" and row.last_status == 429
    wait = row.next_attempt_at.replace(tzinfo=dt.UTC) - row.created_at.replace(tzinfo=dt.UTC)
    assert wait >= dt.timedelta(seconds=100)


def _tenant_of(rt: Runtime) -> Tenant:
    project, public, secret = rt.projects.create("acme")
    return Tenant("acme", project.id, public, secret)


def test_a_lease_left_by_a_dead_sender_is_taken_again_and_delivered_once(
    settings: Settings, receiver: Receiver
) -> None:
    """A sender that dies before posting: after its lease the new runtime delivers exactly
    once."""
    first = Runtime.build(settings, load_plugins=False)
    first.start()
    tenant = _tenant_of(first)
    _create(first, tenant, receiver.url)
    delivery_id = _enqueue(first, tenant)
    [leased] = WebhookSender(first.engine, settings, lease_seconds=0.5).lease()
    first.stop()  # "crash": the leased delivery is never attempted

    second = Runtime.build(settings, load_plugins=False)
    second.start()
    try:
        sender = WebhookSender(second.engine, settings)
        assert sender.run() == 0  # the lease still holds
        time.sleep(0.6)
        assert sender.run() == 1
        row = _row(second, delivery_id)
        assert (row.state, row.attempts) == ("delivered", 2)
        assert sender.run() == 0
        assert [s.headers["webhook-id"] for s in receiver.requests] == [leased.msg_id]
        # the dead sender's late outcome cannot overwrite the new one: its lease is fenced
        from closedloop.act.webhooks.outbox import Outcome

        late = WebhookSender(second.engine, settings).record(leased, Outcome(ok=False))
        assert late == "lost" and _row(second, delivery_id).state == "delivered"
    finally:
        second.stop()


def test_a_sender_dying_after_the_post_causes_one_repeat_with_the_same_message_id(
    settings: Settings, receiver: Receiver
) -> None:
    """At least once: a POST whose outcome was never recorded is sent again, same webhook-id."""
    first = Runtime.build(settings, load_plugins=False)
    first.start()
    tenant = _tenant_of(first)
    secret = _create(first, tenant, receiver.url)
    delivery_id = _enqueue(first, tenant)
    dying = WebhookSender(first.engine, settings, lease_seconds=0.3)
    [leased] = dying.lease()
    assert dying.attempt(leased).ok  # posted, then the process "dies" before recording
    first.stop()

    second = Runtime.build(settings, load_plugins=False)
    second.start()
    try:
        time.sleep(0.4)
        assert WebhookSender(second.engine, settings).run() == 1
        assert _row(second, delivery_id).state == "delivered"
        ids = [s.headers["webhook-id"] for s in receiver.requests]
        assert ids == [leased.msg_id, leased.msg_id]
        for seen in receiver.requests:
            _verify(secret, seen)
    finally:
        second.stop()


@pytest.mark.parametrize("status", [200, 500])
def test_a_huge_response_is_not_read_beyond_the_limit(
    runtime: Runtime, tenant: Tenant, receiver: Receiver, status: int
) -> None:
    receiver.script = [Reply(status, huge=True)]
    _create(runtime, tenant, receiver.url)
    delivery_id = _enqueue(runtime, tenant)
    WebhookSender(runtime.engine, runtime.settings).run()
    row = _row(runtime, delivery_id)
    assert row.last_status == status
    assert row.state == ("delivered" if status == 200 else "failed")
    assert receiver.huge_bytes_written < HUGE // 8
    if status == 500:
        assert len(row.last_error) <= 600 and row.last_error.startswith("HTTP 500: xxx")


def test_a_receiver_slower_than_the_timeout_is_a_failed_attempt(
    runtime: Runtime, tenant: Tenant, receiver: Receiver
) -> None:
    receiver.script = [Reply(200, delay=1.0)]
    _create(runtime, tenant, receiver.url)
    delivery_id = _enqueue(runtime, tenant)
    WebhookSender(runtime.engine, runtime.settings).run()
    row = _row(runtime, delivery_id)
    assert row.state == "failed" and row.last_status is None
    assert "timed out after 0.3 s" in row.last_error


def test_a_redirect_to_the_metadata_address_is_not_followed(
    runtime: Runtime, tenant: Tenant, receiver: Receiver
) -> None:
    receiver.script = [Reply(302, b"", {"location": "http://169.254.169.254/latest/meta-data"})]
    _create(runtime, tenant, receiver.url)
    delivery_id = _enqueue(runtime, tenant)
    WebhookSender(runtime.engine, runtime.settings).run()
    row = _row(runtime, delivery_id)
    assert row.state == "failed" and row.last_status == 302
    assert "not followed" in row.last_error and "169.254.169.254" in row.last_error
    assert len(receiver.requests) == 1


def test_a_slack_endpoint_receives_a_signed_message_with_text(
    runtime: Runtime, tenant: Tenant, receiver: Receiver
) -> None:
    secret = _create(runtime, tenant, receiver.url, format="slack")
    action = WebhookAction(WebhookParams(endpoint="hook"), runtime.act_context())
    trigger = Trigger(
        project_id=tenant.project_id,
        rule="thumbs-down-spike",
        kind="metric",
        segment="model=m@1",
        fired_at=dt.datetime(2026, 3, 1, tzinfo=dt.UTC),
        snapshot={"value": float("nan"), "n": 12},
    )
    result = action.run(trigger)
    assert result.ok, result.summary
    WebhookSender(runtime.engine, runtime.settings).run()
    [seen] = receiver.requests
    message = _verify(secret, seen)
    assert "thumbs-down-spike" in message["text"] and "model=m@1" in message["text"]
    assert message["blocks"][0]["type"] == "header"


def test_the_webhook_action_queues_the_trigger_and_says_what_a_dry_run_would_send(
    runtime: Runtime, tenant: Tenant, receiver: Receiver
) -> None:
    _create(runtime, tenant, receiver.url)
    context: ActContext = runtime.act_context()
    trigger = Trigger(
        project_id=tenant.project_id,
        rule="r1",
        kind="issue",
        segment="issue=4",
        fired_at=dt.datetime(2026, 3, 1, tzinfo=dt.UTC),
        snapshot={"size": 3, "seen": dt.datetime(2026, 2, 1, tzinfo=dt.UTC)},
        interaction_ids=("i1", "i2"),
        issue_id=4,
        firing_id=9,
    )
    dry = WebhookAction(WebhookParams(endpoint="hook"), context).run(trigger, dry_run=True)
    assert dry.ok and dry.dry_run and json.loads(dry.details["body"])["data"]["rule"] == "r1"
    with runtime.engine.connect() as conn:
        count = conn.execute(
            sa.select(sa.func.count()).select_from(models.webhook_deliveries)
        ).scalar_one()
    assert count == 0

    result = WebhookAction(WebhookParams(endpoint="hook"), context).run(trigger)
    row = _row(runtime, result.details["delivery_id"])
    assert row.firing_id == 9 and row.state == "pending"
    data = json.loads(row.payload)["data"]
    assert data["interaction_ids"] == ["i1", "i2"] and data["issue_id"] == 4
    assert data["snapshot"]["seen"] == "2026-02-01T00:00:00+00:00"

    missing = WebhookAction(WebhookParams(endpoint="nope"), context).run(trigger)
    assert not missing.ok and "'nope'" in missing.summary


async def test_the_routes_create_list_rotate_test_and_delete_endpoints(
    runtime: Runtime, tenant: Tenant, receiver: Receiver, client: httpx.AsyncClient
) -> None:
    h = tenant.headers()
    body = {"name": "ops", "url": receiver.url, "allow_private": True}
    created = await client.post("/v1/webhooks", json=body, headers=h)
    assert created.status_code == 201, created.text
    secret = created.json()["secret"]
    assert secret.startswith("whsec_")
    listed = (await client.get("/v1/webhooks", headers=h)).json()["endpoints"]
    assert [e["name"] for e in listed] == ["ops"] and "secret" not in listed[0]
    assert secret not in json.dumps(listed)

    rotated = await client.post("/v1/webhooks/ops/rotate", headers=h)
    assert rotated.status_code == 200 and rotated.json()["secret"] not in (secret, None)
    queued = await client.post("/v1/webhooks/ops/test", headers=h)
    assert queued.status_code == 202
    WebhookSender(runtime.engine, runtime.settings).run()
    [seen] = receiver.requests
    assert _verify(rotated.json()["secret"], seen)["type"] == "closedloop.test"

    deleted = await client.delete("/v1/webhooks/ops", headers=h)
    assert deleted.status_code == 200
    assert (await client.delete("/v1/webhooks/ops", headers=h)).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "a", "url": "ftp://example.com/x"}, "url"),
        ({"name": "a", "url": "http://127.0.0.1:9/x"}, "url"),
        ({"name": "a", "url": "http://169.254.169.254/", "allow_private": True}, "url"),
        ({"name": "a", "url": "not a url"}, "url"),
        ({"name": "Bad Name", "url": "https://93.184.216.34/x"}, "name"),
        ({"name": "a", "url": "https://93.184.216.34/x", "format": "teams"}, "format"),
    ],
)
async def test_bad_endpoints_are_refused_naming_the_field(
    tenant: Tenant, client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/v1/webhooks", json=body, headers=tenant.headers())
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field


async def test_a_duplicate_name_is_refused_naming_it(
    tenant: Tenant, client: httpx.AsyncClient
) -> None:
    body = {"name": "ops", "url": "https://93.184.216.34/x"}
    assert (await client.post("/v1/webhooks", json=body, headers=tenant.headers())).is_success
    again = await client.post("/v1/webhooks", json=body, headers=tenant.headers())
    assert again.status_code == 400 and again.json()["field"] == "name"


async def test_another_projects_endpoints_and_deliveries_answer_404(
    runtime: Runtime,
    tenant: Tenant,
    other_tenant: Tenant,
    receiver: Receiver,
    client: httpx.AsyncClient,
) -> None:
    _create(runtime, tenant, receiver.url)
    delivery_id = _enqueue(runtime, tenant)
    h = other_tenant.headers()
    assert (await client.delete("/v1/webhooks/hook", headers=h)).status_code == 404
    assert (await client.post("/v1/webhooks/hook/rotate", headers=h)).status_code == 404
    assert (await client.post("/v1/webhooks/hook/test", headers=h)).status_code == 404
    retry = await client.post(f"/v1/webhooks/deliveries/{delivery_id}/retry", headers=h)
    assert retry.status_code == 404
    assert (await client.get("/v1/webhooks", headers=h)).json()["endpoints"] == []
    assert (await client.get("/v1/webhooks/deliveries", headers=h)).json()["deliveries"] == []
    mine = await client.get("/v1/webhooks/deliveries", headers=tenant.headers())
    assert [d["id"] for d in mine.json()["deliveries"]] == [delivery_id]


async def test_the_public_key_may_not_manage_webhooks(
    tenant: Tenant, client: httpx.AsyncClient
) -> None:
    public = tenant.headers("public")
    assert (await client.get("/v1/webhooks", headers=public)).status_code == 401
    body = {"name": "ops", "url": "https://93.184.216.34/x"}
    assert (await client.post("/v1/webhooks", json=body, headers=public)).status_code == 401
    assert (await client.get("/v1/webhooks/deliveries")).status_code == 401


def test_the_cli_adds_lists_delivers_and_retries(
    database_url: str,
    settings: Settings,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from closedloop.cli import app

    monkeypatch.setenv("CLOSEDLOOP_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("CLOSEDLOOP_DATABASE_URL", database_url)
    monkeypatch.setenv("CLOSEDLOOP_WEBHOOK_ALLOW", '["127.0.0.1"]')
    monkeypatch.setenv("CLOSEDLOOP_WEBHOOK_MAX_ATTEMPTS", "1")
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    run("projects", "create", "shop")
    bad = runner.invoke(app, ["webhooks", "add", "ops", "http://127.0.0.1:9/", "--project", "shop"])
    assert bad.exit_code == 1
    added = run("webhooks", "add", "ops", receiver.url, "--project", "shop", "--allow-private")
    assert "whsec_" in added
    assert "ops" in run("webhooks", "list", "--project", "shop")
    receiver.script = [Reply(500)]
    rt = Runtime.build(Settings(), load_plugins=False)
    try:
        with rt.engine.begin() as conn:
            [project_id] = conn.execute(sa.select(models.projects.c.id)).scalars().all()
            delivery_id = enqueue(conn, project_id, "ops", "closedloop.test", {"n": 1})
    finally:
        rt.engine.dispose()
    assert "1 deliveries attempted" in run("webhooks", "deliver")
    assert str(delivery_id) in run("webhooks", "deliveries", "--project", "shop", "--state", "dead")
    receiver.script = [Reply(200)]
    run("webhooks", "retry", str(delivery_id), "--project", "shop")
    run("webhooks", "deliver")
    assert str(delivery_id) in run(
        "webhooks", "deliveries", "--project", "shop", "--state", "delivered"
    )
    assert "removed" in run("webhooks", "remove", "ops", "--project", "shop")
