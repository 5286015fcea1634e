"""Loading images safely: local paths, http(s) URLs, inline base64.

Every load is bounded: bytes read, pixels decoded (checked from the header,
before decoding, so a 50k x 50k PNG costs nothing), time spent fetching. URLs are
fetched over http(s) only; a host is resolved once per hop and the address that was
checked is the address connected to (the request carries the original ``Host`` header and,
over TLS, the original server name, so a DNS answer that changes between the check and the
connect cannot reach another address); every address that is not globally routable
(``is_global``: private, loopback, link-local, carrier-grade NAT, documentation,
benchmarking, unique-local IPv6...) is refused unless the operator allows private URLs
(SSRF guard; redirects are followed by hand and checked at each hop). Local paths are read
only when they are regular files (not FIFOs, devices, sockets or folders). Failures raise
:class:`InvalidDocument` with a ``code`` and a reason a person can act on.

Reduced-size decoding: given ``draft_size`` (the model's input side), a JPEG whose shorter
side is at least twice that is decoded by libjpeg at 1/2, 1/4 or 1/8 scale (DCT scaling,
``Image.draft``), never below ``draft_size`` on either side: 2-4x less decoding work, and the
model sees the same picture (cosine >= 0.99 to the full decode, ``tests/test_fast_pipeline.py``).
The pixel limit is checked on the full size, before any decoding.
"""

from __future__ import annotations

import base64
import io
import ipaddress
import os
import socket
import stat
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import httpx
from PIL import Image, UnidentifiedImageError

from clipfuse.errors import InvalidDocument
from clipfuse.schemas import ImageSource
from clipfuse.schemas import limits as L

__all__ = ["ImageLimits", "ImageLoader", "Resolver", "is_public_address", "system_resolver"]

_MAX_REDIRECTS = 3
#: open without blocking (a FIFO with no writer) and without taking a terminal
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)

#: ``resolver(host, port) -> addresses``: how a URL's host name becomes the addresses checked and connected to
Resolver = Callable[[str, int], Iterable[str]]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver (``getaddrinfo``), first answer first."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Globally routable unicast (``is_global``), IPv4 inside IPv6 (mapped, 6to4, NAT64) included.

    ``is_global`` refuses private, loopback, link-local, carrier-grade NAT (100.64.0.0/10),
    benchmarking, documentation, unique-local IPv6 and reserved ranges; multicast is refused too.
    """
    if not address.is_global or address.is_multicast:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(embedded)
    return True


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


@dataclass(frozen=True, slots=True)
class _Target:
    """One hop of a fetch: the URL as written, and the address its host was checked at."""

    url: str
    host: str
    port: int
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    https: bool

    def pinned_url(self) -> httpx.URL:
        """The URL with its host replaced by the checked address (nothing resolves it again)."""
        return httpx.URL(self.url).copy_with(host=str(self.address))

    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.https else 80
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """Bounds on one image load. ``allowed_networks``: address ranges allowed besides the public
    internet (an internal image host, ``("10.20.0.0/16",)``) when private URLs are not allowed."""

    max_bytes: int = L.DEFAULT_MAX_IMAGE_BYTES
    max_pixels: int = L.DEFAULT_MAX_IMAGE_PIXELS
    fetch_timeout_s: float = L.DEFAULT_FETCH_TIMEOUT_S
    allow_private_urls: bool = False
    allowed_networks: tuple[str, ...] = ()

    def address_allowed(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if self.allow_private_urls or is_public_address(address):
            return True
        return any(address in ipaddress.ip_network(net, strict=False) for net in self.allowed_networks)


class ImageLoader:
    """Turns an :class:`ImageSource` into a decoded RGB PIL image, or a clear error.

    ``base_dir`` resolves relative paths (the folder of a JSONL catalog).
    ``path_roots``, when given, confines local paths to those folders.
    ``resolver(host, port)`` gives a host's addresses (default: the system's, once per URL
    and redirect hop); tests inject their own to rebind a name between two calls.
    """

    def __init__(
        self,
        limits: ImageLimits | None = None,
        *,
        base_dir: Path | None = None,
        path_roots: tuple[Path, ...] | None = None,
        http_client: httpx.Client | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.limits = limits or ImageLimits()
        self.base_dir = base_dir
        self.path_roots = tuple(p.resolve() for p in path_roots) if path_roots else None
        self._http = http_client
        self._resolver = resolver or system_resolver

    # -- reading bytes -------------------------------------------------------------
    def read_bytes(self, source: ImageSource) -> bytes:
        if source.path is not None:
            return self._read_path(source.path)
        if source.url is not None:
            return self._fetch(source.url)
        assert source.data is not None
        if len(source.data) * 3 // 4 > self.limits.max_bytes:
            raise InvalidDocument(self._too_many_bytes(len(source.data) * 3 // 4), code="image_too_large")
        return base64.b64decode(source.data)

    def _too_many_bytes(self, size: int) -> str:
        return (
            f"image of {size:,} bytes is over the limit of {self.limits.max_bytes:,} bytes (CLIPFUSE_IMAGES__MAX_BYTES)"
        )

    def _read_path(self, raw: str) -> bytes:
        """Read a regular file, bounded: opened first, then checked on the open file (``fstat``).

        Opening never blocks (``O_NONBLOCK``: a FIFO with no writer would otherwise wait
        forever); anything but a regular file (FIFO, device, socket, folder) is refused, and
        the size limit holds for what is read, even if the file grows after the check.
        """
        try:
            path = Path(raw).expanduser()
            if not path.is_absolute() and self.base_dir is not None:
                path = self.base_dir / path
            if self.path_roots is not None:
                resolved = path.resolve()
                if not any(resolved.is_relative_to(root) for root in self.path_roots):
                    raise InvalidDocument(
                        f"image path {raw!r} is outside the allowed folders {[str(r) for r in self.path_roots]}",
                        code="image_path_forbidden",
                    )
            fd = os.open(path, _OPEN_FLAGS)
        except InvalidDocument:
            raise
        except (FileNotFoundError, NotADirectoryError):
            raise InvalidDocument(f"image file not found: {raw[:300]!r}", code="image_not_found") from None
        except IsADirectoryError:
            raise InvalidDocument(
                f"image path is a folder, not a file: {raw[:300]!r}", code="image_not_found"
            ) from None
        except PermissionError:
            raise InvalidDocument(f"no permission to read image file {raw[:300]!r}", code="image_not_found") from None
        except (OSError, ValueError, RuntimeError) as e:  # a NUL byte, a name too long, ~nosuchuser, a socket
            raise InvalidDocument(
                f"image path {raw[:300]!r} cannot be opened: {e.strerror if isinstance(e, OSError) else e}",
                code="image_unreadable",
            ) from None
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise InvalidDocument(f"image path is a folder, not a file: {path}", code="image_not_found")
            if not stat.S_ISREG(info.st_mode):
                raise InvalidDocument(
                    f"image path {path} is a {_file_kind(info.st_mode)}, not a regular file; only regular "
                    "files are read",
                    code="image_not_a_file",
                )
            if info.st_size > self.limits.max_bytes:
                raise InvalidDocument(self._too_many_bytes(info.st_size), code="image_too_large")
            os.set_blocking(fd, True)
            with os.fdopen(fd, "rb") as fh:
                fd = -1  # the file object owns it now
                data = fh.read(self.limits.max_bytes + 1)
        except OSError as e:
            raise InvalidDocument(
                f"image file {path} cannot be read: {e.strerror or e}", code="image_unreadable"
            ) from None
        finally:
            if fd >= 0:
                os.close(fd)
        if len(data) > self.limits.max_bytes:  # it grew after fstat
            raise InvalidDocument(self._too_many_bytes(len(data)), code="image_too_large")
        return data

    def _resolve(self, url: str) -> _Target:
        """Check ``url`` and resolve its host once: the address returned is the one connected to."""
        try:
            parsed = httpx.URL(url)
            scheme = parsed.scheme
            host = parsed.raw_host.decode("ascii").strip("[]")  # IDNA-encoded, what DNS and TLS use
        except (httpx.InvalidURL, UnicodeError, ValueError) as e:
            raise InvalidDocument(f"image url is malformed: {e}", code="image_url_forbidden") from None
        if scheme not in ("http", "https"):
            raise InvalidDocument(f"image url must be http(s), got {scheme!r}", code="image_url_forbidden")
        if not host:
            raise InvalidDocument(f"image url has no host: {url[:200]}", code="image_url_forbidden")
        port = parsed.port or (443 if scheme == "https" else 80)
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                answers = list(self._resolver(host, port))
                addresses = [ipaddress.ip_address(a) for a in answers]
            except (OSError, UnicodeError, ValueError) as e:
                raise InvalidDocument(
                    f"image url host {host!r} cannot be resolved: {e}", code="image_unreachable"
                ) from None
        if not addresses:
            raise InvalidDocument(f"image url host {host!r} resolves to no address", code="image_unreachable")
        for address in addresses:
            if not self.limits.address_allowed(address):
                raise InvalidDocument(
                    f"image url host {host!r} resolves to the non-public address {address}; refused "
                    "(set CLIPFUSE_IMAGES__ALLOWED_NETWORKS to allow an internal image host's range, or "
                    "CLIPFUSE_IMAGES__ALLOW_PRIVATE_URLS=true to allow every address)",
                    code="image_url_forbidden",
                )
        return _Target(url=url, host=host, port=port, address=addresses[0], https=scheme == "https")

    def _fetch(self, url: str) -> bytes:
        client = self._http or httpx.Client(timeout=self.limits.fetch_timeout_s, follow_redirects=False)
        deadline = time.monotonic() + self.limits.fetch_timeout_s
        try:
            current = url
            for _ in range(_MAX_REDIRECTS + 1):
                target = self._resolve(current)
                try:
                    request = client.build_request(
                        "GET",
                        target.pinned_url(),
                        headers={"Host": target.host_header()},
                        # TLS: the certificate is checked against the URL's host name, sent as SNI
                        extensions={"sni_hostname": target.host} if target.https else None,
                        timeout=self.limits.fetch_timeout_s,
                    )
                    response = client.send(request, stream=True, follow_redirects=False)
                    try:
                        if response.is_redirect:
                            location = response.headers.get("location")
                            if not location:
                                raise InvalidDocument(
                                    f"redirect without location from {current[:200]}", code="image_unreachable"
                                )
                            current = urljoin(current, location)
                            continue
                        if response.status_code != 200:
                            raise InvalidDocument(
                                f"image url answered HTTP {response.status_code}: {current[:200]}",
                                code="image_unreachable",
                            )
                        declared = response.headers.get("content-length")
                        if declared and declared.isdigit() and int(declared) > self.limits.max_bytes:
                            raise InvalidDocument(self._too_many_bytes(int(declared)), code="image_too_large")
                        buffer = bytearray()
                        for chunk in response.iter_bytes():
                            buffer.extend(chunk)
                            if len(buffer) > self.limits.max_bytes:
                                raise InvalidDocument(self._too_many_bytes(len(buffer)), code="image_too_large")
                            if time.monotonic() > deadline:  # httpx's timeout is per read: bound the whole body
                                raise httpx.ReadTimeout("body not received in time")
                        return bytes(buffer)
                    finally:
                        response.close()
                except httpx.TimeoutException:
                    raise InvalidDocument(
                        f"image url timed out after {self.limits.fetch_timeout_s:g}s: {current[:200]} "
                        "(CLIPFUSE_IMAGES__FETCH_TIMEOUT_S)",
                        code="image_unreachable",
                    ) from None
                except httpx.HTTPError as e:
                    raise InvalidDocument(
                        f"image url unreachable: {current[:200]}: {e}", code="image_unreachable"
                    ) from None
                except (httpx.InvalidURL, ValueError) as e:
                    raise InvalidDocument(f"image url is malformed: {e}", code="image_url_forbidden") from None
            raise InvalidDocument(f"too many redirects (>{_MAX_REDIRECTS}) from {url[:200]}", code="image_unreachable")
        finally:
            if self._http is None:
                client.close()

    # -- decoding ------------------------------------------------------------------
    def decode(self, data: bytes, *, draft_size: int | None = None) -> Image.Image:
        """Decode to RGB; ``draft_size``: allow a JPEG to be decoded at reduced size (see the module doc)."""
        if len(data) > self.limits.max_bytes:
            raise InvalidDocument(self._too_many_bytes(len(data)), code="image_too_large")
        if not data:
            raise InvalidDocument("image is empty (0 bytes)", code="image_unreadable")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))
                width, height = image.size
                if width * height > self.limits.max_pixels:
                    raise InvalidDocument(
                        f"image is {width}x{height} = {width * height:,} pixels, over the limit of "
                        f"{self.limits.max_pixels:,} (CLIPFUSE_IMAGES__MAX_PIXELS)",
                        code="image_too_large",
                    )
                if draft_size and image.format == "JPEG" and min(width, height) >= 2 * draft_size:
                    image.draft("RGB", (draft_size, draft_size))  # keeps both sides >= draft_size
                image.load()  # truncated files raise (ImageFile.LOAD_TRUNCATED_IMAGES stays False)
        except InvalidDocument:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            # Pillow's own guard (PIL.Image.MAX_IMAGE_PIXELS) fires inside Image.open, before the check above
            raise InvalidDocument(
                f"image refused as a decompression bomb: {e} (clipfuse's limit is {self.limits.max_pixels:,} "
                "pixels, CLIPFUSE_IMAGES__MAX_PIXELS)",
                code="image_too_large",
            ) from None
        except UnidentifiedImageError:
            raise InvalidDocument("not an image (unknown or unsupported format)", code="image_unreadable") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise InvalidDocument(f"image is corrupt or truncated: {e}", code="image_unreadable") from None
        return _to_rgb(image)

    def load(self, source: ImageSource, *, draft_size: int | None = None) -> Image.Image:
        """Read and decode one image; raises :class:`InvalidDocument` on any failure."""
        return self.decode(self.read_bytes(source), draft_size=draft_size)


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparent areas on white (product cut-outs are usually on white)."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16"):  # 16-bit grey: convert("RGB") would clip every value over 255 to white
        image = image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")
