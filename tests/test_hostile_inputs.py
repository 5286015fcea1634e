"""Issue 11: no input stops a run. Hostile catalog lines, files and URLs, each met by one reader rule.

Real files (FIFOs made with mkfifo), real HTTP(S) servers on 127.0.0.1 / 127.0.0.2, and
resolvers injected so a name can answer differently on its second lookup (DNS rebinding).
Nothing here connects anywhere but the loopback: the URL cases whose old behaviour would
have connected elsewhere go through a client that refuses every non-loopback connection.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from clipfuse.errors import InvalidDocument
from clipfuse.images import ImageLimits, ImageLoader, is_public_address
from clipfuse.schemas import ImageSource, IngestReport, Rejection, parse_document
from clipfuse.schemas.safetext import json_depth, loads_bounded, markup_safe, scrub
from clipfuse.sources import CatalogReader

TIMEOUT_S = 2.0


def jpeg(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), color).save(buffer, "JPEG")
    return buffer.getvalue()


GOOD = jpeg((200, 30, 30))
EVIL = jpeg((30, 30, 200))  # what the "internal" server answers: never fetched


# -- the catalog reader ---------------------------------------------------------------------------


def _items(path: Path, **kw: Any) -> tuple[CatalogReader, list[Any]]:
    reader = CatalogReader(path, **kw)
    return reader, list(reader)


def _deep(levels: int) -> str:
    return '{"id":"x","title":"t","attributes":{"a":' + "[" * levels + "]" * levels + "}}"


def test_a_line_nested_100000_deep_is_one_rejection_and_the_rest_is_read(tmp_path: Path) -> None:
    catalog = tmp_path / "c.jsonl"
    catalog.write_text("\n".join(['{"id":"a","title":"one"}', _deep(100_000), '{"id":"b","title":"two"}']) + "\n")
    started = time.perf_counter()
    reader, items = _items(catalog)
    assert time.perf_counter() - started < 2.0
    assert [type(i).__name__ for i in items] == ["dict", "InvalidDocument", "dict"]
    bad = items[1]
    assert (bad.code, bad.doc_id) == ("too_deep", "c.jsonl:line2")
    assert "100,002 levels" in bad.message and "MAX_JSON_DEPTH" in bad.message
    assert [reader.line_of(p) for p in range(3)] == [1, 2, 3]


def test_depth_is_measured_outside_strings_and_bounded_exactly() -> None:
    assert json_depth('{"a": "[[[[[[[[[[", "b": [{"c": "]]]]\\"{{{"}]}') == 3
    assert loads_bounded("[" * 32 + "]" * 32) is not None
    with pytest.raises(InvalidDocument) as info:
        loads_bounded("[" * 33 + "]" * 33)
    assert info.value.code == "too_deep"
    # the parser's own limits never escape: a 5,000-digit integer, NaN-free garbage
    with pytest.raises(InvalidDocument) as info:
        loads_bounded("1" * 5000)
    assert info.value.code == "invalid_json"


def test_one_byte_that_is_not_utf8_rejects_only_its_line(tmp_path: Path) -> None:
    catalog = tmp_path / "c.jsonl"
    catalog.write_bytes(b'{"id":"a","title":"one"}\n{"id":"b","title":"caf\xe9"}\n{"id":"c","title":"three"}\n')
    _reader, items = _items(catalog)
    assert [i["id"] for i in items if isinstance(i, dict)] == ["a", "c"]
    [bad] = [i for i in items if isinstance(i, InvalidDocument)]
    assert (bad.code, bad.doc_id) == ("invalid_utf8", "c.jsonl:line2")
    assert "e9" in bad.message


def test_a_line_over_the_byte_limit_is_refused_without_being_kept(tmp_path: Path) -> None:
    catalog = tmp_path / "c.jsonl"
    long_line = json.dumps({"id": "big", "title": "x" * 5000})
    catalog.write_text("\n".join(['{"id":"a","title":"one"}', long_line, '{"id":"c","title":"three"}']))
    reader, items = _items(catalog, max_line_bytes=1000)
    assert isinstance(items[1], InvalidDocument) and items[1].code == "line_too_long"
    assert f"{len(long_line):,} bytes" in items[1].message
    assert items[2] == {"id": "c", "title": "three"}  # the last line has no newline
    assert reader.count() == 3


def test_blank_lines_and_a_bom_are_not_documents(tmp_path: Path) -> None:
    catalog = tmp_path / "c.jsonl"
    catalog.write_bytes(b'\xef\xbb\xbf{"id":"a","title":"one"}\r\n\n   \t\r\n{"id":"b","title":"two"}\n\n')
    reader, items = _items(catalog)
    assert items == [{"id": "a", "title": "one"}, {"id": "b", "title": "two"}]
    assert [reader.line_of(0), reader.line_of(1)] == [1, 4]
    assert reader.count() == 2


def test_a_lone_surrogate_is_rejected_and_the_rejection_is_safe_to_write() -> None:
    raw = json.loads('{"id": "bad \\ud800 id", "title": "bad \\udfff"}')
    with pytest.raises(InvalidDocument) as info:
        parse_document(raw)
    rejection = Rejection(
        id=info.value.doc_id, code=info.value.code, reason=info.value.message, stage="validate", document=raw
    )
    text = IngestReport(rejected=[rejection]).model_dump_json()
    text.encode("utf-8")  # raised UnicodeEncodeError before
    back = json.loads(text)["rejected"][0]
    assert back["id"] == "bad \ufffd id" and back["document"]["title"] == "bad \ufffd"
    assert scrub("ok \U0001f600") == "ok \U0001f600"  # real astral characters are kept


def test_user_text_cannot_break_console_markup() -> None:
    from rich.console import Console

    out = io.StringIO()
    Console(file=out).print(f"[bold]id[/] {markup_safe('[/x] evil [bold] ' + chr(0xD800))}")
    assert "[/x] evil [bold]" in out.getvalue()


# -- files ------------------------------------------------------------------------------------------


def _load_within(loader: ImageLoader, source: ImageSource, seconds: float = 5.0) -> Any:
    """Load in a thread and give up after ``seconds`` (the old reader blocked forever on a FIFO)."""
    pool = ThreadPoolExecutor(1)
    future = pool.submit(loader.load, source)
    try:
        return future.result(timeout=seconds)
    except InvalidDocument as e:
        return e
    finally:
        pool.shutdown(wait=False)


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "f.jpg"
    os.mkfifo(path)
    yield path
    # unblock a reader the old code left waiting in open(): a writer that opens and closes at once
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def test_a_fifo_is_refused_at_once_instead_of_hanging(fifo: Path) -> None:
    started = time.perf_counter()
    try:
        outcome = _load_within(ImageLoader(), ImageSource(path=str(fifo)))
    except FutureTimeout:
        pytest.fail("loading a FIFO blocked (the reader waits for a writer that never comes)")
    assert isinstance(outcome, InvalidDocument), outcome
    assert outcome.code == "image_not_a_file" and "FIFO" in outcome.message
    assert time.perf_counter() - started < 1.0


def test_devices_folders_and_sockets_are_not_read(tmp_path: Path) -> None:
    loader = ImageLoader()
    dev = _load_within(loader, ImageSource(path="/dev/zero"))
    assert isinstance(dev, InvalidDocument) and dev.code == "image_not_a_file" and "device" in dev.message
    folder = _load_within(loader, ImageSource(path=str(tmp_path)))
    assert isinstance(folder, InvalidDocument) and folder.code == "image_not_found"
    sock_path = tmp_path / "s.jpg"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    try:
        sock = _load_within(loader, ImageSource(path=str(sock_path)))
        assert isinstance(sock, InvalidDocument) and sock.code in ("image_unreadable", "image_not_a_file")
    finally:
        server.close()
    nul = _load_within(loader, ImageSource(path="a\x00b.jpg"))
    assert isinstance(nul, InvalidDocument) and nul.code == "image_unreadable"


def test_the_size_limit_holds_for_what_is_read(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(GOOD)
    loader = ImageLoader(ImageLimits(max_bytes=len(GOOD)))
    assert loader.read_bytes(ImageSource(path=str(path))) == GOOD
    path.write_bytes(GOOD + b"\0")
    with pytest.raises(InvalidDocument) as info:
        loader.read_bytes(ImageSource(path=str(path)))
    assert info.value.code == "image_too_large"


# -- URLs: real servers on the loopback ------------------------------------------------------------


@dataclass
class _Server:
    address: str
    port: int
    body: bytes
    requests: list[dict[str, str]] = field(default_factory=list)
    httpd: ThreadingHTTPServer | None = None


def _handler(server: _Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            server.requests.append({"path": self.path, "host": self.headers.get("Host", "")})
            if self.path.startswith("/to/"):  # /to/<host>/<path>: redirect to http://<host>:<same port>/<path>
                _, _, target, rest = self.path.split("/", 3)
                self.send_response(302)
                self.send_header("Location", f"http://{target}:{server.port}/{rest}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(server.body)))
            self.end_headers()
            self.wfile.write(server.body)

    return Handler


def _start(server: _Server, tls: ssl.SSLContext | None = None) -> None:
    httpd = ThreadingHTTPServer((server.address, server.port), _handler(server))
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    httpd.daemon_threads = True
    server.port = httpd.server_address[1]
    server.httpd = httpd
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


def _stop(*servers: _Server) -> None:
    for server in servers:
        if server.httpd is not None:
            server.httpd.shutdown()
            server.httpd.server_close()


@pytest.fixture
def cdn_and_internal() -> Iterator[tuple[_Server, _Server]]:
    """Two servers on the same port: 127.0.0.1 plays a public CDN, 127.0.0.2 an internal service."""
    for _ in range(20):
        cdn = _Server("127.0.0.1", 0, GOOD)
        _start(cdn)
        internal = _Server("127.0.0.2", cdn.port, EVIL)
        try:
            _start(internal)
        except OSError as e:
            _stop(cdn)
            if e.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                continue
            raise
        yield cdn, internal
        _stop(cdn, internal)
        return
    pytest.fail("could not bind 127.0.0.1 and 127.0.0.2 on one port")


class Rebinding:
    """A resolver whose answer for each name changes after the first lookup (DNS rebinding)."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        seen = self.calls.count(host)
        sequence = self.answers[host]
        return sequence[min(seen, len(sequence)) - 1]


#: 127.0.0.1 stands for the public internet in these tests; everything else keeps the guard
CDN_ONLY = ImageLimits(allowed_networks=("127.0.0.1/32",), fetch_timeout_s=TIMEOUT_S)


def test_dns_rebinding_connects_to_the_address_that_was_checked(cdn_and_internal: tuple[_Server, _Server]) -> None:
    cdn, internal = cdn_and_internal
    resolver = Rebinding({"shop.test": [["127.0.0.1"], ["127.0.0.2"]]})
    loader = ImageLoader(CDN_ONLY, resolver=resolver)
    assert loader.read_bytes(ImageSource(url=f"http://shop.test:{cdn.port}/a.jpg")) == GOOD
    assert resolver.calls == ["shop.test"]  # resolved once
    assert internal.requests == []
    assert cdn.requests == [{"path": "/a.jpg", "host": f"shop.test:{cdn.port}"}]  # the original Host header
    # the rebound answer, had it been the first, is refused before any connection
    again = ImageLoader(CDN_ONLY, resolver=Rebinding({"shop.test": [["127.0.0.2"]]}))
    with pytest.raises(InvalidDocument) as info:
        again.read_bytes(ImageSource(url=f"http://shop.test:{cdn.port}/a.jpg"))
    assert info.value.code == "image_url_forbidden" and "127.0.0.2" in info.value.message
    assert internal.requests == []


def test_every_redirect_hop_is_resolved_once_and_pinned(cdn_and_internal: tuple[_Server, _Server]) -> None:
    cdn, internal = cdn_and_internal
    resolver = Rebinding({"shop.test": [["127.0.0.1"], ["127.0.0.2"]], "img.test": [["127.0.0.1"], ["127.0.0.2"]]})
    loader = ImageLoader(CDN_ONLY, resolver=resolver)
    url = f"http://shop.test:{cdn.port}/to/img.test/b.jpg"
    assert loader.read_bytes(ImageSource(url=url)) == GOOD
    assert resolver.calls == ["shop.test", "img.test"]
    assert [r["host"] for r in cdn.requests] == [f"shop.test:{cdn.port}", f"img.test:{cdn.port}"]
    assert internal.requests == []
    # a hop whose name answers an internal address is refused at that hop
    inner = ImageLoader(CDN_ONLY, resolver=Rebinding({"shop.test": [["127.0.0.1"]], "db.test": [["127.0.0.2"]]}))
    with pytest.raises(InvalidDocument) as info:
        inner.read_bytes(ImageSource(url=f"http://shop.test:{cdn.port}/to/db.test/c.jpg"))
    assert info.value.code == "image_url_forbidden"
    assert internal.requests == []


def test_the_system_resolver_is_asked_once_per_hop(
    cdn_and_internal: tuple[_Server, _Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default path: the name is looked up once by clipfuse; the connection goes to that address."""
    cdn, internal = cdn_and_internal
    real = socket.getaddrinfo
    answers = iter(["127.0.0.1", "127.0.0.2", "127.0.0.2"])
    looked_up: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "shop.test":
            looked_up.append(host)
            return real(next(answers), port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    loader = ImageLoader(ImageLimits(allow_private_urls=True, fetch_timeout_s=TIMEOUT_S))
    assert loader.read_bytes(ImageSource(url=f"http://shop.test:{cdn.port}/a.jpg")) == GOOD
    assert looked_up == ["shop.test"] and internal.requests == []


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            f"/CN={name}",
            "-addext",
            f"subjectAltName=DNS:{name}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tls_checks_the_certificate_against_the_url_host_with_sni(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, "cdn.test")
    seen_sni: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: seen_sni.append(name)  # type: ignore[assignment,misc]
    server = _Server("127.0.0.1", 0, GOOD)
    _start(server, tls=context)
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(verify=trust) as client:
            loader = ImageLoader(
                ImageLimits(allowed_networks=("127.0.0.1/32",), fetch_timeout_s=TIMEOUT_S),
                http_client=client,
                resolver=Rebinding({"cdn.test": [["127.0.0.1"], ["127.0.0.2"]]}),
            )
            assert loader.read_bytes(ImageSource(url=f"https://cdn.test:{server.port}/a.jpg")) == GOOD
        assert seen_sni == ["cdn.test"]
        assert server.requests == [{"path": "/a.jpg", "host": f"cdn.test:{server.port}"}]
    finally:
        _stop(server)


# -- URLs: every address that is not globally routable --------------------------------------------


class _NoEgress(httpx.BaseTransport):
    """A transport that refuses to connect anywhere: the guard must refuse before it is reached."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts.append(str(request.url))
        raise httpx.ConnectError("this test never connects off the loopback")


@pytest.mark.parametrize(
    "address",
    [
        "100.64.0.1",  # carrier-grade NAT
        "100.127.255.254",
        "198.18.0.1",  # benchmarking
        "192.0.2.10",  # documentation
        "203.0.113.5",
        "192.0.0.1",  # IETF protocol assignments
        "0.1.2.3",  # "this network"
        "240.0.0.1",  # reserved
        "224.0.0.251",  # multicast (is_global says yes)
        "[2001:db8::1]",  # IPv6 documentation
        "[fc00::1]",  # IPv6 unique-local
        "[fd12:3456::1]",
        "[::ffff:127.0.0.1]",  # IPv4-mapped loopback
        "[64:ff9b::a00:1]",  # NAT64 of 10.0.0.1
        "[2002:a00:1::1]",  # 6to4 of 10.0.0.1
    ],
)
def test_non_global_addresses_are_refused(address: str) -> None:
    transport = _NoEgress()
    with httpx.Client(transport=transport) as client:
        loader = ImageLoader(ImageLimits(fetch_timeout_s=TIMEOUT_S), http_client=client)
        with pytest.raises(InvalidDocument) as info:
            loader.read_bytes(ImageSource(url=f"http://{address}/a.jpg"))
    assert info.value.code == "image_url_forbidden", info.value
    assert transport.attempts == []


def test_a_name_resolving_to_cgnat_is_refused() -> None:
    transport = _NoEgress()
    with httpx.Client(transport=transport) as client:
        loader = ImageLoader(
            ImageLimits(fetch_timeout_s=TIMEOUT_S),
            http_client=client,
            resolver=Rebinding({"isp.test": [["100.64.0.1"]]}),
        )
        with pytest.raises(InvalidDocument) as info:
            loader.read_bytes(ImageSource(url="http://isp.test/a.jpg"))
    assert info.value.code == "image_url_forbidden" and "100.64.0.1" in info.value.message
    assert transport.attempts == []


def test_public_addresses_pass_the_guard() -> None:
    import ipaddress

    for address in ("8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"):
        assert is_public_address(ipaddress.ip_address(address)), address
    # the guard lets a public answer through to the connection, pinned to that address
    transport = _NoEgress()
    with httpx.Client(transport=transport) as client:
        loader = ImageLoader(
            ImageLimits(fetch_timeout_s=TIMEOUT_S), http_client=client, resolver=Rebinding({"x.test": [["8.8.8.8"]]})
        )
        with pytest.raises(InvalidDocument) as info:
            loader.read_bytes(ImageSource(url="http://x.test/a.jpg"))
    assert info.value.code == "image_unreachable"
    assert transport.attempts == ["http://8.8.8.8/a.jpg"]
