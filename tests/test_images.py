"""Tests for clipfuse.images: real files on disk and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from clipfuse.errors import InvalidDocument
from clipfuse.images import ImageLimits, ImageLoader
from clipfuse.schemas import ImageSource

TIMEOUT_S = 0.5
SLOW_SLEEP_S = 1.5
SMALL_MAX_BYTES = 4 * 1024


# -- image bytes ---------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def noisy_rgb(size: tuple[int, int] = (64, 48)) -> Image.Image:
    """Random pixels, so the JPEG has a sizeable entropy-coded body (truncation then matters)."""
    return Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def crafted_png(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height RGB pixels, with a tiny IDAT (a pixel bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + png_chunk(b"IEND", b"")
    )


GOOD_JPEG = encode(noisy_rgb(), "JPEG", quality=90)
HUGE_BODY = b"\xff" * (16 * SMALL_MAX_BYTES)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def refused(loader: ImageLoader, source: ImageSource | str | dict[str, str], code: str) -> InvalidDocument:
    """Load ``source``, expect an InvalidDocument with ``code``, return it for message checks."""
    src = source if isinstance(source, ImageSource) else ImageSource.model_validate(source)
    with pytest.raises(InvalidDocument) as info:
        loader.load(src)
    assert info.value.code == code, f"{info.value.code}: {info.value}"
    message = str(info.value)
    assert message and len(message) < 1000
    return info.value


# -- a real HTTP server ----------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # close-delimited bodies when no Content-Length is sent

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output quiet
        pass

    def _send(self, status: int, body: bytes, *, length: bool = True, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):  # the client gave up (size limit): fine
            self.wfile.write(body)

    def _redirect(self, location: str | None, status: int = 302) -> None:
        self._send(status, b"", headers={"Location": location} if location is not None else {})

    def do_GET(self) -> None:
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        path = self.path
        if path == "/good.jpg":
            self._send(200, GOOD_JPEG, headers={"Content-Type": "image/jpeg"})
        elif path == "/huge":
            self._send(200, HUGE_BODY)
        elif path == "/huge-no-length":
            self._send(200, HUGE_BODY, length=False)
        elif path == "/good-no-length.jpg":
            self._send(200, GOOD_JPEG, length=False)
        elif path == "/page.html":
            self._send(200, b"<html><body>not an image</body></html>", headers={"Content-Type": "text/html"})
        elif path == "/missing.jpg":
            self._send(404, b"not found")
        elif path == "/error.jpg":
            self._send(500, b"boom")
        elif path == "/slow.jpg":
            time.sleep(SLOW_SLEEP_S)
            self._send(200, GOOD_JPEG)
        elif path == "/trickle.jpg":
            # answers at once, then sends one byte every 0.1 s: each read is quick, the whole is slow
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(40):
                    self.wfile.write(b"\xff")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass
        elif path == "/redirect-relative":
            self._redirect("/good.jpg")
        elif path == "/redirect-absolute":
            self._redirect(f"{base}/good.jpg", status=301)
        elif path == "/redirect-chain":
            self._redirect("/redirect-relative", status=307)
        elif path == "/redirect-loop":
            self._redirect("/redirect-loop")
        elif path == "/redirect-no-location":
            self._redirect(None)
        elif path == "/redirect-ftp":
            self._redirect("ftp://127.0.0.1/good.jpg")
        else:
            self._send(404, b"no such path")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture()
def web() -> ImageLoader:
    """A loader allowed to fetch from the loopback test server, with a short timeout."""
    return ImageLoader(ImageLimits(allow_private_urls=True, fetch_timeout_s=TIMEOUT_S))


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- loading from paths ----------------------------------------------------------------


def test_jpeg_from_absolute_path(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(GOOD_JPEG)
    image = ImageLoader().load(ImageSource(path=str(path)))
    assert image.mode == "RGB"
    assert image.size == (64, 48)


def test_relative_path_resolves_against_base_dir(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(GOOD_JPEG)
    image = ImageLoader(base_dir=tmp_path).load(ImageSource.model_validate("imgs/a.jpg"))
    assert image.size == (64, 48)
    # the same relative path without base_dir is looked up elsewhere (the working folder)
    refused(ImageLoader(), "imgs/a.jpg", "image_not_found")


def test_relative_path_without_base_dir_uses_working_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.jpg").write_bytes(GOOD_JPEG)
    monkeypatch.chdir(tmp_path)
    assert ImageLoader().load(ImageSource(path="a.jpg")).size == (64, 48)


def test_absolute_path_ignores_base_dir(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(GOOD_JPEG)
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert ImageLoader(base_dir=other).load(ImageSource(path=str(path))).size == (64, 48)


def test_png_rgb_keeps_pixels(tmp_path: Path) -> None:
    image = Image.new("RGB", (5, 4), (10, 200, 30))
    path = tmp_path / "a.png"
    path.write_bytes(encode(image, "PNG"))
    out = ImageLoader().load(ImageSource(path=str(path)))
    assert out.mode == "RGB"
    assert out.size == (5, 4)
    assert out.getpixel((2, 2)) == (10, 200, 30)


def test_rgba_png_transparent_becomes_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    image.putpixel((1, 1), (0, 0, 255, 255))  # one opaque blue pixel
    image.putpixel((2, 2), (0, 0, 0, 128))  # half-transparent black
    path = tmp_path / "cutout.png"
    path.write_bytes(encode(image, "PNG"))
    out = ImageLoader().load(ImageSource(path=str(path)))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 1)) == (0, 0, 255)
    r, g, b = out.getpixel((2, 2))
    assert r == g == b and 120 <= r <= 135  # black at 50 % over white


def test_la_png_transparent_becomes_white(tmp_path: Path) -> None:
    image = Image.new("LA", (3, 3), (0, 0))
    image.putpixel((0, 0), (40, 255))
    path = tmp_path / "la.png"
    path.write_bytes(encode(image, "PNG"))
    out = ImageLoader().load(ImageSource(path=str(path)))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (40, 40, 40)
    assert out.getpixel((2, 2)) == (255, 255, 255)


def test_grayscale_png_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "gray.png"
    path.write_bytes(encode(Image.new("L", (3, 3), 77), "PNG"))
    out = ImageLoader().load(ImageSource(path=str(path)))
    assert out.mode == "RGB"
    assert out.getpixel((1, 1)) == (77, 77, 77)


def test_grayscale_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "gray.jpg"
    path.write_bytes(encode(Image.new("L", (16, 16), 128), "JPEG"))
    out = ImageLoader().load(ImageSource(path=str(path)))
    assert out.mode == "RGB"
    r, g, b = out.getpixel((8, 8))
    assert r == g == b and abs(r - 128) <= 2


def test_16_bit_grayscale_png_keeps_its_tones(tmp_path: Path) -> None:
    # 16-bit grey: 0x8000 is mid grey, 0x1000 dark; both must not come out white
    image = Image.new("I;16", (2, 1))
    image.putpixel((0, 0), 0x8000)
    image.putpixel((1, 0), 0x1000)
    path = tmp_path / "gray16.png"
    path.write_bytes(encode(image, "PNG"))
    assert Image.open(path).mode.startswith("I;16")
    out = ImageLoader().load(ImageSource(path=str(path)))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (128, 128, 128)
    assert out.getpixel((1, 0)) == (16, 16, 16)


def test_palette_png_becomes_rgb(tmp_path: Path) -> None:
    image = Image.new("RGB", (4, 4), (0, 128, 255)).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    path = tmp_path / "palette.png"
    path.write_bytes(encode(image, "PNG"))
    assert Image.open(path).mode == "P"
    out = ImageLoader().load(ImageSource(path=str(path)))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (0, 128, 255)


def test_palette_png_with_transparency_becomes_white(tmp_path: Path) -> None:
    image = Image.new("P", (3, 3), 0)
    image.putpalette([0, 255, 0, 255, 0, 0] + [0] * (256 * 3 - 6))  # index 0 green, index 1 red
    image.putpixel((1, 1), 1)
    path = tmp_path / "palette-t.png"
    path.write_bytes(encode(image, "PNG", transparency=0))  # green is transparent
    out = ImageLoader().load(ImageSource(path=str(path)))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 1)) == (255, 0, 0)


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    path.write_bytes(encode(Image.new("CMYK", (8, 8), (0, 0, 0, 0)), "JPEG"))
    out = ImageLoader().load(ImageSource(path=str(path)))
    assert out.mode == "RGB"
    assert all(c >= 250 for c in out.getpixel((4, 4)))


def test_gif_and_webp_load(tmp_path: Path) -> None:
    for fmt, name in (("GIF", "a.gif"), ("WEBP", "a.webp")):
        path = tmp_path / name
        path.write_bytes(encode(Image.new("RGB", (6, 6), (255, 0, 0)), fmt))
        out = ImageLoader().load(ImageSource(path=str(path)))
        assert out.mode == "RGB" and out.size == (6, 6)


# -- loading inline data -----------------------------------------------------------------


def test_inline_base64_jpeg_and_png() -> None:
    loader = ImageLoader()
    assert loader.load(ImageSource(data=b64(GOOD_JPEG))).size == (64, 48)
    rgba = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    out = loader.load(ImageSource(data=b64(encode(rgba, "PNG"))))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_read_bytes_returns_the_raw_bytes(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(GOOD_JPEG)
    loader = ImageLoader()
    assert loader.read_bytes(ImageSource(path=str(path))) == GOOD_JPEG
    assert loader.read_bytes(ImageSource(data=b64(GOOD_JPEG))) == GOOD_JPEG


# -- refusals: local files and bytes -------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    error = refused(ImageLoader(), {"path": str(tmp_path / "nope.jpg")}, "image_not_found")
    assert "not found" in str(error)
    assert "nope.jpg" in str(error)


def test_folder_is_not_an_image(tmp_path: Path) -> None:
    error = refused(ImageLoader(), {"path": str(tmp_path)}, "image_not_found")
    assert "folder" in str(error)


def test_corrupt_bytes(tmp_path: Path) -> None:
    path = tmp_path / "junk.jpg"
    path.write_bytes(os.urandom(2048))
    error = refused(ImageLoader(), {"path": str(path)}, "image_unreadable")
    assert "not an image" in str(error)


def test_png_signature_with_garbage(tmp_path: Path) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    refused(ImageLoader(), {"path": str(path)}, "image_unreadable")


def test_truncated_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    path.write_bytes(GOOD_JPEG[: len(GOOD_JPEG) // 2])
    error = refused(ImageLoader(), {"path": str(path)}, "image_unreadable")
    assert "truncated" in str(error)


def test_truncated_png(tmp_path: Path) -> None:
    data = encode(noisy_rgb(), "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    refused(ImageLoader(), {"path": str(path)}, "image_unreadable")


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("these are not the pixels you are looking for\n" * 10)
    error = refused(ImageLoader(), {"path": str(path)}, "image_unreadable")
    assert "not an image" in str(error)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    error = refused(ImageLoader(), {"path": str(path)}, "image_unreadable")
    assert "empty" in str(error)


def test_inline_data_that_is_not_an_image() -> None:
    refused(ImageLoader(), {"data": b64(b"hello world")}, "image_unreadable")


def test_decode_refuses_empty_and_oversized_bytes() -> None:
    loader = ImageLoader(ImageLimits(max_bytes=SMALL_MAX_BYTES))
    with pytest.raises(InvalidDocument) as info:
        loader.decode(b"")
    assert info.value.code == "image_unreadable"
    with pytest.raises(InvalidDocument) as info:
        loader.decode(b"\x00" * (SMALL_MAX_BYTES + 1))
    assert info.value.code == "image_too_large"


def test_file_over_max_bytes(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    path.write_bytes(b"\xff" * (SMALL_MAX_BYTES + 1))
    error = refused(ImageLoader(ImageLimits(max_bytes=SMALL_MAX_BYTES)), {"path": str(path)}, "image_too_large")
    assert f"{SMALL_MAX_BYTES:,}" in str(error)
    assert "CLIPFUSE_IMAGES__MAX_BYTES" in str(error)


def test_file_exactly_max_bytes_is_read(tmp_path: Path) -> None:
    path = tmp_path / "edge.jpg"
    path.write_bytes(GOOD_JPEG)
    loader = ImageLoader(ImageLimits(max_bytes=len(GOOD_JPEG)))
    assert loader.load(ImageSource(path=str(path))).size == (64, 48)


def test_inline_data_over_max_bytes() -> None:
    error = refused(
        ImageLoader(ImageLimits(max_bytes=SMALL_MAX_BYTES)),
        {"data": b64(b"\xff" * (2 * SMALL_MAX_BYTES))},
        "image_too_large",
    )
    assert "CLIPFUSE_IMAGES__MAX_BYTES" in str(error)


@pytest.mark.parametrize("how", ["path", "data"])
def test_pixel_bomb_refused_before_decoding(tmp_path: Path, how: str) -> None:
    bomb = crafted_png(50_000, 50_000)
    assert len(bomb) < 200
    if how == "path":
        path = tmp_path / "bomb.png"
        path.write_bytes(bomb)
        source = ImageSource(path=str(path))
    else:
        source = ImageSource(data=b64(bomb))
    start = time.perf_counter()
    error = refused(ImageLoader(), source, "image_too_large")
    assert time.perf_counter() - start < 1.0
    message = str(error)
    assert "2500000000" in message.replace(",", "")
    assert "CLIPFUSE_IMAGES__MAX_PIXELS" in message


def test_image_over_configured_pixels_refused_from_header() -> None:
    # 8000 x 8000 is under Pillow's own bomb guard but over the default 50 M pixel limit
    start = time.perf_counter()
    error = refused(ImageLoader(), {"data": b64(crafted_png(8_000, 8_000))}, "image_too_large")
    assert time.perf_counter() - start < 1.0
    assert "8000x8000" in str(error)
    assert "64,000,000" in str(error)
    assert "CLIPFUSE_IMAGES__MAX_PIXELS" in str(error)


def test_real_image_over_small_pixel_limit() -> None:
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    loader = ImageLoader(ImageLimits(max_pixels=64 * 64))
    with pytest.raises(InvalidDocument) as info:
        loader.decode(data)
    assert info.value.code == "image_too_large"
    assert "10,000" in str(info.value)
    assert ImageLoader(ImageLimits(max_pixels=100 * 100)).decode(data).size == (100, 100)


# -- path_roots confinement -------------------------------------------------------------------


def test_path_roots_allow_inside_and_refuse_outside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "in.jpg").write_bytes(GOOD_JPEG)
    (tmp_path / "out.jpg").write_bytes(GOOD_JPEG)
    loader = ImageLoader(path_roots=(root,), base_dir=root)

    assert loader.load(ImageSource(path=str(root / "sub" / "in.jpg"))).size == (64, 48)
    assert loader.load(ImageSource(path="sub/in.jpg")).size == (64, 48)

    error = refused(loader, {"path": str(tmp_path / "out.jpg")}, "image_path_forbidden")
    assert "outside the allowed folders" in str(error)
    assert str(root.resolve()) in str(error)
    refused(loader, {"path": "../out.jpg"}, "image_path_forbidden")
    refused(loader, {"path": str(root / "sub" / ".." / ".." / "out.jpg")}, "image_path_forbidden")
    refused(loader, {"path": "/etc/passwd"}, "image_path_forbidden")


def test_path_roots_refuse_symlink_escape(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.jpg").write_bytes(GOOD_JPEG)
    (root / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    refused(ImageLoader(path_roots=(root,)), {"path": str(root / "link.jpg")}, "image_path_forbidden")


def test_path_roots_missing_file_inside_root(tmp_path: Path) -> None:
    refused(ImageLoader(path_roots=(tmp_path,)), {"path": str(tmp_path / "nope.jpg")}, "image_not_found")


# -- URLs ----------------------------------------------------------------------------------------


def test_url_loads_jpeg(server: str, web: ImageLoader) -> None:
    image = web.load(ImageSource(url=f"{server}/good.jpg"))
    assert image.mode == "RGB"
    assert image.size == (64, 48)
    assert web.read_bytes(ImageSource(url=f"{server}/good-no-length.jpg")) == GOOD_JPEG


def test_url_string_shorthand(server: str, web: ImageLoader) -> None:
    assert web.load(ImageSource.model_validate(f"{server}/good.jpg")).size == (64, 48)


@pytest.mark.parametrize("path", ["/redirect-relative", "/redirect-absolute", "/redirect-chain"])
def test_redirects_are_followed(server: str, web: ImageLoader, path: str) -> None:
    assert web.load(ImageSource(url=server + path)).size == (64, 48)


def test_each_redirect_hop_is_checked(server: str, web: ImageLoader) -> None:
    # the first hop is allowed; the server redirects to ftp://, which the per-hop check refuses
    error = refused(web, {"url": f"{server}/redirect-ftp"}, "image_url_forbidden")
    assert "ftp" in str(error)


def test_redirect_loop(server: str, web: ImageLoader) -> None:
    error = refused(web, {"url": f"{server}/redirect-loop"}, "image_unreachable")
    assert "too many redirects" in str(error)


def test_redirect_without_location(server: str, web: ImageLoader) -> None:
    error = refused(web, {"url": f"{server}/redirect-no-location"}, "image_unreachable")
    assert "location" in str(error)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_loopback_url_refused_by_default(server: str, host: str) -> None:
    port = server.rsplit(":", 1)[1]
    error = refused(ImageLoader(), {"url": f"http://{host}:{port}/good.jpg"}, "image_url_forbidden")
    assert "CLIPFUSE_IMAGES__ALLOW_PRIVATE_URLS" in str(error)


def test_loopback_redirect_target_refused_by_default(server: str) -> None:
    # with private URLs refused, even the first hop to the loopback redirector is refused
    refused(ImageLoader(), {"url": f"{server}/redirect-absolute"}, "image_url_forbidden")


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3/a.jpg",
        "http://192.168.0.10/a.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/a.jpg",
        "http://0.0.0.0/a.jpg",
    ],
)
def test_private_addresses_refused_by_default(url: str) -> None:
    start = time.perf_counter()
    error = refused(ImageLoader(), {"url": url}, "image_url_forbidden")
    assert time.perf_counter() - start < 1.0  # refused before any connection attempt
    assert "non-public address" in str(error)


def test_url_over_max_bytes_with_content_length(server: str) -> None:
    loader = ImageLoader(ImageLimits(allow_private_urls=True, max_bytes=SMALL_MAX_BYTES, fetch_timeout_s=TIMEOUT_S))
    error = refused(loader, {"url": f"{server}/huge"}, "image_too_large")
    assert f"{len(HUGE_BODY):,}" in str(error)  # the declared length
    assert "CLIPFUSE_IMAGES__MAX_BYTES" in str(error)


def test_url_over_max_bytes_without_content_length(server: str) -> None:
    loader = ImageLoader(ImageLimits(allow_private_urls=True, max_bytes=SMALL_MAX_BYTES, fetch_timeout_s=TIMEOUT_S))
    error = refused(loader, {"url": f"{server}/huge-no-length"}, "image_too_large")
    assert "CLIPFUSE_IMAGES__MAX_BYTES" in str(error)


def test_url_that_is_not_an_image(server: str, web: ImageLoader) -> None:
    refused(web, {"url": f"{server}/page.html"}, "image_unreadable")


@pytest.mark.parametrize(("path", "status"), [("/missing.jpg", "404"), ("/error.jpg", "500")])
def test_url_http_error(server: str, web: ImageLoader, path: str, status: str) -> None:
    error = refused(web, {"url": server + path}, "image_unreachable")
    assert status in str(error)


def test_url_timeout(server: str, web: ImageLoader) -> None:
    start = time.perf_counter()
    error = refused(web, {"url": f"{server}/slow.jpg"}, "image_unreachable")
    assert time.perf_counter() - start < SLOW_SLEEP_S
    assert "timed out" in str(error)
    assert "CLIPFUSE_IMAGES__FETCH_TIMEOUT_S" in str(error)


def test_url_trickling_body_is_bounded_by_the_timeout(server: str, web: ImageLoader) -> None:
    # every read finishes well within the timeout, the whole body does not: the fetch must still stop
    start = time.perf_counter()
    error = refused(web, {"url": f"{server}/trickle.jpg"}, "image_unreachable")
    assert time.perf_counter() - start < 3 * TIMEOUT_S
    assert "CLIPFUSE_IMAGES__FETCH_TIMEOUT_S" in str(error)


def test_url_connection_refused() -> None:
    loader = ImageLoader(ImageLimits(allow_private_urls=True, fetch_timeout_s=TIMEOUT_S))
    error = refused(loader, {"url": f"http://127.0.0.1:{closed_port()}/a.jpg"}, "image_unreachable")
    assert "unreachable" in str(error)


@pytest.mark.parametrize("allow_private", [False, True])
def test_unresolvable_host(allow_private: bool) -> None:
    loader = ImageLoader(ImageLimits(allow_private_urls=allow_private, fetch_timeout_s=TIMEOUT_S))
    error = refused(loader, {"url": "http://nonexistent.invalid/x.jpg"}, "image_unreachable")
    assert "nonexistent.invalid" in str(error)


def test_shared_http_client_is_left_open(server: str) -> None:
    import httpx

    with httpx.Client(follow_redirects=False) as client:
        loader = ImageLoader(ImageLimits(allow_private_urls=True, fetch_timeout_s=TIMEOUT_S), http_client=client)
        assert loader.load(ImageSource(url=f"{server}/good.jpg")).size == (64, 48)
        assert loader.load(ImageSource(url=f"{server}/redirect-relative")).size == (64, 48)
        assert not client.is_closed
