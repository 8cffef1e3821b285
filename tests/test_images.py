"""ImageLoader over real loopback HTTP: auth, presign, SSRF guard, limits, decoding, local files and the cache."""

from __future__ import annotations

import io
import os
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from ls_stub import FakeLabelStudio, Response, StubServer
from PIL import Image

from backend.images.errors import (
    ImageAuthError,
    ImageBadUrl,
    ImageDecodeError,
    ImageError,
    ImageForbidden,
    ImageNotFound,
    ImageTooLarge,
    ImageUnreachable,
)
from backend.images.loader import ImageLoader
from backend.images.ls_auth import LabelStudioAuth

UPLOAD = "/data/upload/1/x.png"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def sample_rgb(height: int = 12, width: int = 16) -> np.ndarray:
    rng = np.random.default_rng(height * 1000 + width)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


SAMPLE = sample_rgb()
SAMPLE_PNG = png_bytes(Image.fromarray(SAMPLE))


def make_loader(auth: LabelStudioAuth | None, **overrides) -> ImageLoader:
    options = dict(local_files_root=None, max_bytes=1 << 20, max_pixels=1 << 20, cache_items=8, timeout=3.0,
                   allow_private_hosts=False)
    options.update(overrides)
    return ImageLoader(auth, **options)


@pytest.fixture
def ls():
    with FakeLabelStudio() as server:
        server.protected_file(UPLOAD, SAMPLE_PNG)
        yield server


@pytest.fixture
def cloud():
    with StubServer() as server:
        yield server


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- Label Studio auth -------------------------------------------------------------------------------------------------


def test_legacy_token_upload(ls: FakeLabelStudio) -> None:
    loader = make_loader(LabelStudioAuth(ls.url, ls.legacy_token, 3))
    image = loader.load(UPLOAD)
    assert image.rgb.dtype == np.uint8 and image.rgb.shape == SAMPLE.shape
    np.testing.assert_array_equal(image.rgb, SAMPLE)
    assert not image.rgb.flags.writeable
    assert (image.height, image.width) == SAMPLE.shape[:2]
    assert ls.authorizations() == [f"Token {ls.legacy_token}"]
    # The same file by absolute URL on the Label Studio origin also gets the token (and is another cache entry).
    assert loader.load(ls.url + UPLOAD).key == image.key
    assert ls.authorizations()[-1] == f"Token {ls.legacy_token}"


def test_upload_path_without_leading_slash(ls: FakeLabelStudio) -> None:
    loader = make_loader(LabelStudioAuth(ls.url, ls.legacy_token, 3))
    np.testing.assert_array_equal(loader.load("upload/1/x.png").rgb, SAMPLE)


def test_pat_exchange_and_refresh(ls: FakeLabelStudio) -> None:
    now = [time.time()]
    auth = LabelStudioAuth(ls.url, ls.pat, 3, clock=lambda: now[0])
    ls.protected_file("/data/upload/1/y.png", SAMPLE_PNG)
    ls.protected_file("/data/upload/1/z.png", SAMPLE_PNG)
    loader = make_loader(auth)
    loader.load(UPLOAD)
    loader.load("/data/upload/1/y.png")
    assert ls.refresh_calls == 1
    downloads = [r for r in ls.requests if r.path.startswith("/data/")]
    assert len({r.authorization for r in downloads}) == 1
    assert downloads[0].authorization.startswith("Bearer ") and ls.pat not in downloads[0].authorization
    now[0] += ls.access_ttl  # the access token is about to expire: renewed before the download
    loader.load("/data/upload/1/z.png")
    assert ls.refresh_calls == 2
    assert ls.requests[-1].authorization != downloads[0].authorization


def test_pat_access_token_rejected_is_refreshed_once(ls: FakeLabelStudio) -> None:
    loader = make_loader(LabelStudioAuth(ls.url, ls.pat, 3))
    loader.load(UPLOAD)
    ls.expire_access_tokens()  # the server no longer accepts the cached token: 401, exchange, retry
    loader.clear()
    np.testing.assert_array_equal(loader.load(UPLOAD).rgb, SAMPLE)
    assert ls.refresh_calls == 2
    assert [r.path for r in ls.requests][-3:] == [UPLOAD, "/api/token/refresh/", UPLOAD]


@pytest.mark.parametrize("key", [None, "0000000000000000000000000000000000000000"])
def test_401_from_label_studio(ls: FakeLabelStudio, key: str | None) -> None:
    loader = make_loader(LabelStudioAuth(ls.url, key, 3))
    with pytest.raises(ImageAuthError) as info:
        loader.load(UPLOAD)
    error = info.value
    assert error.status == 502 and "401" in str(error) and "LABEL_STUDIO_API_KEY" in str(error)
    if key:
        assert key not in str(error) and "--enable-legacy-api-token" in str(error)


def test_rejected_pat_is_an_auth_error(ls: FakeLabelStudio) -> None:
    from ls_stub import make_jwt

    wrong = make_jwt({"token_type": "refresh", "exp": int(time.time()) + 3600, "jti": "revoked"})
    loader = make_loader(LabelStudioAuth(ls.url, wrong, 3))
    with pytest.raises(ImageAuthError) as info:
        loader.load(UPLOAD)
    assert wrong not in str(info.value) and "LABEL_STUDIO_API_KEY" in str(info.value)


def test_relative_path_without_label_studio_url() -> None:
    with pytest.raises(ImageBadUrl, match="LABEL_STUDIO_URL"):
        make_loader(None).load(UPLOAD)
    with pytest.raises(ImageBadUrl, match="LABEL_STUDIO_URL"):
        make_loader(LabelStudioAuth(None, "abc", 3)).load("s3://bucket/x.png", task_id=1)


# -- cloud storage through presign -------------------------------------------------------------------------------------


def test_cloud_uri_through_presign_redirect(ls: FakeLabelStudio, cloud: StubServer) -> None:
    uri = "s3://bucket/folder/a b+c.png"
    cloud.file("/bucket/a.png", SAMPLE_PNG)
    ls.cloud[uri] = cloud.url + "/bucket/a.png?X-Amz-Signature=secret"
    loader = make_loader(LabelStudioAuth(ls.url, ls.legacy_token, 3), allow_private_hosts=True)
    image = loader.load(uri, task_id=7)
    np.testing.assert_array_equal(image.rgb, SAMPLE)
    assert ls.presign_fileuris == [uri]
    assert ls.requests[0].path.startswith("/tasks/7/presign/?fileuri=")
    assert ls.authorizations() == [f"Token {ls.legacy_token}"]
    assert cloud.authorizations() == [None]  # the cloud host never sees the Label Studio token
    # Project-level route when there is no task id.
    ls.cloud["gs://b/p.png"] = cloud.url + "/bucket/a.png"
    loader.load("gs://b/p.png", project_id=3)
    assert ls.requests[-1].path.startswith("/projects/3/presign/?fileuri=")


def test_cloud_uri_needs_task(ls: FakeLabelStudio) -> None:
    with pytest.raises(ImageBadUrl, match="task id"):
        make_loader(LabelStudioAuth(ls.url, ls.legacy_token, 3)).load("azure-blob://c/x.png")
    with pytest.raises(ImageBadUrl, match="integer"):
        make_loader(LabelStudioAuth(ls.url, ls.legacy_token, 3)).load("s3://b/x.png", task_id="1/../../api")


def test_cloud_uri_unknown_to_label_studio(ls: FakeLabelStudio) -> None:
    loader = make_loader(LabelStudioAuth(ls.url, ls.legacy_token, 3))
    with pytest.raises(ImageNotFound, match="no cloud storage") as info:
        loader.load("s3://unknown/x.png", task_id=1)
    assert info.value.status == 422


def test_presign_redirect_to_private_host_is_checked(ls: FakeLabelStudio, cloud: StubServer) -> None:
    cloud.file("/bucket/a.png", SAMPLE_PNG)
    ls.cloud["s3://bucket/a.png"] = cloud.url + "/bucket/a.png"
    loader = make_loader(LabelStudioAuth(ls.url, ls.legacy_token, 3), allow_private_hosts=False)
    with pytest.raises(ImageForbidden, match="ALLOW_PRIVATE_URLS") as info:
        loader.load("s3://bucket/a.png", task_id=1)
    assert info.value.status == 403
    assert cloud.requests == []


# -- other hosts, redirects and the SSRF guard -------------------------------------------------------------------------


def test_other_host_gets_no_token(ls: FakeLabelStudio, cloud: StubServer) -> None:
    cloud.file("/x.png", SAMPLE_PNG)
    loader = make_loader(LabelStudioAuth(ls.url, ls.legacy_token, 3), allow_private_hosts=True)
    np.testing.assert_array_equal(loader.load(cloud.url + "/x.png").rgb, SAMPLE)
    assert cloud.authorizations() == [None]
    assert ls.requests == []


def test_redirect_off_label_studio_drops_the_token_for_good(ls: FakeLabelStudio, cloud: StubServer) -> None:
    cloud.file("/moved.png", SAMPLE_PNG)
    ls.route("/data/upload/1/moved.png", lambda r: Response(302, b"", {"Location": cloud.url + "/moved.png"}))
    loader = make_loader(LabelStudioAuth(ls.url, ls.legacy_token, 3), allow_private_hosts=True)
    np.testing.assert_array_equal(loader.load("/data/upload/1/moved.png").rgb, SAMPLE)
    assert ls.authorizations() == [f"Token {ls.legacy_token}"] and cloud.authorizations() == [None]
    # A foreign host bouncing us back to Label Studio does not get the token re-attached.
    cloud.route("/bounce.png", lambda r: Response(307, b"", {"Location": ls.url + UPLOAD}))
    with pytest.raises(ImageAuthError):
        loader.load(cloud.url + "/bounce.png")
    assert ls.authorizations()[-1] is None


def test_redirect_loop(cloud: StubServer) -> None:
    cloud.route("/loop", lambda r: Response(302, b"", {"Location": "/loop"}))
    with pytest.raises(ImageUnreachable, match="redirects"):
        make_loader(None, allow_private_hosts=True).load(cloud.url + "/loop")
    assert cloud.count("/loop") == 6


def test_private_hosts_refused_but_label_studio_allowed(ls: FakeLabelStudio, cloud: StubServer) -> None:
    cloud.file("/x.png", SAMPLE_PNG)
    loader = make_loader(LabelStudioAuth(ls.url, ls.legacy_token, 3), allow_private_hosts=False)
    loader.load(UPLOAD)  # Label Studio on loopback is fine
    for url in (f"http://127.0.0.2:{ls.port}{UPLOAD}", cloud.url + "/x.png", f"http://localhost:{ls.port}{UPLOAD}",
                "http://[::1]:9/x.png", "http://[::ffff:127.0.0.1]:9/x.png", "http://0.0.0.0:9/x.png",
                "http://169.254.169.254/latest/meta-data", "http://10.1.2.3/x.png", "http://192.168.1.5/x.png"):
        with pytest.raises(ImageForbidden) as info:
            loader.load(url)
        assert info.value.status == 403
        assert ls.legacy_token not in str(info.value)
    assert cloud.requests == [] and len(ls.requests) == 1
    with pytest.raises(ImageForbidden, match="set LABEL_STUDIO_URL to exactly that origin"):
        loader.load(f"http://localhost:{ls.port}{UPLOAD}")  # Label Studio under another name: a hint is given


def test_unsupported_references() -> None:
    loader = make_loader(None)
    for url in ("ftp://example.com/x.png", "data:image/png;base64,AAAA", "x.png", "", "   "):
        with pytest.raises(ImageBadUrl):
            loader.load(url)


# -- HTTP errors and limits --------------------------------------------------------------------------------------------


def test_unreachable_is_quick() -> None:
    loader = make_loader(None, allow_private_hosts=True)
    start = time.monotonic()
    with pytest.raises(ImageUnreachable) as info:
        loader.load(f"http://127.0.0.1:{closed_port()}/x.png")
    assert time.monotonic() - start < 2
    assert info.value.status == 502 and "127.0.0.1" in str(info.value)


def test_label_studio_unreachable_mentions_the_setting() -> None:
    loader = make_loader(LabelStudioAuth(f"http://127.0.0.1:{closed_port()}", "abc", 1))
    with pytest.raises(ImageUnreachable, match="LABEL_STUDIO_URL"):
        loader.load(UPLOAD)


def test_timeout_is_504(cloud: StubServer) -> None:
    cloud.route("/slow.png", lambda r: (time.sleep(1.0), Response(200, SAMPLE_PNG))[1])
    loader = make_loader(None, allow_private_hosts=True, timeout=0.2)
    start = time.monotonic()
    with pytest.raises(ImageUnreachable) as info:
        loader.load(cloud.url + "/slow.png")
    assert info.value.status == 504 and time.monotonic() - start < 0.9


def test_status_mapping(ls: FakeLabelStudio, cloud: StubServer) -> None:
    cloud.route("/err500", lambda r: Response(500, b"boom"))
    cloud.route("/forbidden", lambda r: Response(403, b""))
    loader = make_loader(LabelStudioAuth(ls.url, ls.legacy_token, 3), allow_private_hosts=True)
    with pytest.raises(ImageNotFound) as missing:
        loader.load("/data/upload/1/missing.png")
    assert missing.value.status == 422 and "404" in str(missing.value)
    with pytest.raises(ImageUnreachable) as err:
        loader.load(cloud.url + "/err500?sig=secret")
    assert err.value.status == 502 and "500" in str(err.value) and "secret" not in str(err.value)
    with pytest.raises(ImageAuthError, match="no credentials to hosts other than"):
        loader.load(cloud.url + "/forbidden")


def test_oversized_stream_is_cut_early(cloud: StubServer) -> None:
    total = 64 << 20

    def endless(request):
        chunk = b"\0" * (256 << 10)
        return Response(200, (chunk for _ in range(total // len(chunk))))

    cloud.route("/huge.png", endless)
    loader = make_loader(None, allow_private_hosts=True, max_bytes=300_000)
    with pytest.raises(ImageTooLarge) as info:
        loader.load(cloud.url + "/huge.png")
    assert info.value.status == 413 and "300,000" in str(info.value)
    deadline = time.monotonic() + 2
    while not cloud.stream_aborted and time.monotonic() < deadline:
        time.sleep(0.02)
    assert cloud.stream_aborted and cloud.streamed_bytes < total // 4


def test_oversized_content_length_refused_before_reading(cloud: StubServer) -> None:
    cloud.route("/big.png", lambda r: Response(200, b"x" * 500_000))
    with pytest.raises(ImageTooLarge, match="500,000 bytes"):
        make_loader(None, allow_private_hosts=True, max_bytes=100_000).load(cloud.url + "/big.png")


def _png_with_header_size(width: int, height: int) -> bytes:
    """A small PNG whose IHDR claims ``width`` x ``height`` (the pixel data is far too short to decode)."""
    data = bytearray(png_bytes(Image.new("L", (4, 4))))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr:ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def test_too_many_pixels(cloud: StubServer) -> None:
    loader = make_loader(None, allow_private_hosts=True, max_pixels=10_000)
    with pytest.raises(ImageTooLarge, match="pixels") as info:
        loader.decode(png_bytes(Image.new("RGB", (101, 100))))
    assert info.value.status == 413
    loader.decode(png_bytes(Image.new("RGB", (100, 100))))  # exactly at the limit is fine
    # A header claiming 100000 x 100000 is refused from the header alone (a full decode would fail differently).
    cloud.file("/bomb.png", _png_with_header_size(100_000, 100_000))
    with pytest.raises(ImageTooLarge, match="pixels"):
        loader.load(cloud.url + "/bomb.png")


def test_corrupt_bytes(cloud: StubServer) -> None:
    loader = make_loader(None, allow_private_hosts=True)
    cloud.file("/junk.png", os.urandom(2000))
    cloud.file("/truncated.png", SAMPLE_PNG[: len(SAMPLE_PNG) // 2])
    for path in ("/junk.png", "/truncated.png"):
        with pytest.raises(ImageDecodeError) as info:
            loader.load(cloud.url + path)
        assert info.value.status == 422
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
    with pytest.raises(ImageDecodeError, match="not a supported image"):
        loader.decode(eps)  # exotic decoders (EPS would run Ghostscript) are not offered


# -- decoding -------------------------------------------------------------------------------------------------------


def test_exif_orientation_is_applied(cloud: StubServer) -> None:
    stored = np.zeros((20, 40, 3), np.uint8)  # H=20, W=40: left half red, right half blue
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
    cloud.file("/photo.jpg", buffer.getvalue(), "image/jpeg")
    rgb = make_loader(None, allow_private_hosts=True).load(cloud.url + "/photo.jpg").rgb
    assert rgb.shape == (40, 20, 3)
    top, bottom = rgb[:15].reshape(-1, 3).mean(0), rgb[25:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 60  # the left (red) side is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def _encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _png16_rgb(array: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG written by hand (Pillow cannot write one)."""
    height, width, _ = array.shape
    raw = b"".join(b"\0" + array[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_mode_conversions() -> None:
    loader = make_loader(None)
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    out = loader.decode(_encode(Image.fromarray(grey)))
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.repeat(grey[:, :, None], 3, 2))

    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :4, 3] = 255  # left opaque red, right fully transparent -> white
    out = loader.decode(_encode(Image.fromarray(rgba)))
    np.testing.assert_array_equal(out[:, :4], np.broadcast_to([200, 0, 0], (6, 4, 3)))
    np.testing.assert_array_equal(out[:, 4:], np.full((6, 4, 3), 255))

    palette = Image.fromarray(SAMPLE).quantize(16)
    assert palette.mode == "P"
    out = loader.decode(_encode(palette))
    np.testing.assert_array_equal(out, np.asarray(palette.convert("RGB")))

    transparent = Image.new("P", (4, 4), 0)
    transparent.putpalette([0, 0, 0, 10, 20, 30])
    transparent.putpixel((0, 0), 1)
    out = loader.decode(_encode(transparent, transparency=0))
    assert tuple(out[0, 0]) == (10, 20, 30) and tuple(out[1, 1]) == (255, 255, 255)

    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1040).astype(np.uint16)
    deep[0, 0], deep[0, 1] = 65535, 32896
    reopened = Image.open(io.BytesIO(_encode(Image.fromarray(deep))))
    assert reopened.mode.startswith("I")  # a real 16-bit PNG
    out = loader.decode(_encode(Image.fromarray(deep)))
    assert out.shape == (8, 8, 3)
    assert tuple(out[0, 0]) == (255, 255, 255) and out[0, 1, 0] == 128
    np.testing.assert_array_equal(out[..., 0], np.round(deep / 257).astype(np.uint8))

    deep_rgb = np.array([[[65535, 0, 32896], [256, 511, 1000]]], np.uint16)
    out = loader.decode(_png16_rgb(deep_rgb))
    np.testing.assert_array_equal(out, (deep_rgb >> 8).astype(np.uint8))  # Pillow keeps the high byte

    cmyk = Image.new("CMYK", (5, 3), (0, 255, 0, 0))  # magenta
    out = loader.decode(_encode(cmyk, "JPEG", quality=95))
    assert out.shape == (3, 5, 3) and out[1, 2, 0] > 220 and out[1, 2, 1] < 40 and out[1, 2, 2] > 220

    bilevel = Image.new("1", (3, 2), 1)
    np.testing.assert_array_equal(loader.decode(_encode(bilevel)), np.full((2, 3, 3), 255))


# -- local files ----------------------------------------------------------------------------------------------------


def test_local_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(SAMPLE_PNG)
    outside = tmp_path / "secret.png"
    outside.write_bytes(SAMPLE_PNG)
    (root / "escape.png").symlink_to(outside)
    (root / "inner.png").symlink_to(root / "sub" / "a.png")

    loader = make_loader(None, local_files_root=root)
    np.testing.assert_array_equal(loader.load(str(root / "sub" / "a.png")).rgb, SAMPLE)
    np.testing.assert_array_equal(loader.load((root / "sub" / "a.png").as_uri()).rgb, SAMPLE)
    np.testing.assert_array_equal(loader.load(str(root / "inner.png")).rgb, SAMPLE)  # link that stays inside
    for path in (f"{root}/sub/../../secret.png", f"{root}/../secret.png", str(root / "escape.png"), str(outside),
                 "file://" + str(root / "escape.png"), "/etc/passwd"):
        with pytest.raises(ImageForbidden) as info:
            loader.load(path)
        assert info.value.status == 403
    with pytest.raises(ImageNotFound):
        loader.load(str(root / "missing.png"))
    with pytest.raises(ImageNotFound):
        loader.load(str(root / "sub"))
    with pytest.raises(ImageBadUrl):
        loader.load("file://otherhost/x.png")


def test_local_files_off_by_default(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(SAMPLE_PNG)
    loader = make_loader(None)
    for url in (str(path), path.as_uri()):
        with pytest.raises(ImageForbidden, match="LOCAL_FILES_ROOT"):
            loader.load(url)


def test_local_file_size_limit(tmp_path: Path) -> None:
    (tmp_path / "big.png").write_bytes(b"\0" * 5000)
    with pytest.raises(ImageTooLarge):
        make_loader(None, local_files_root=tmp_path, max_bytes=4000).load(str(tmp_path / "big.png"))


# -- cache ------------------------------------------------------------------------------------------------------------


def test_lru_cache_hits_and_eviction(cloud: StubServer) -> None:
    for name in "abc":
        cloud.file(f"/{name}.png", png_bytes(Image.fromarray(sample_rgb(8, 8 + ord(name) % 5))))
    loader = make_loader(None, allow_private_hosts=True, cache_items=2)

    def load(name: str):
        return loader.load(f"{cloud.url}/{name}.png")

    first_a = load("a")
    load("b")
    assert load("a") is first_a  # hit: no new request
    assert cloud.count("/a.png") == 1
    load("c")  # evicts b, the least recently used
    assert loader.cached() == 2
    load("a")
    assert cloud.count("/a.png") == 1
    load("b")  # downloaded again; evicts c (a was used more recently)
    assert cloud.count("/b.png") == 2
    load("a")
    assert cloud.count("/a.png") == 1 and loader.downloads == 4


def test_keys_follow_content(cloud: StubServer) -> None:
    other = png_bytes(Image.fromarray(sample_rgb(5, 5)))
    cloud.file("/one.png", SAMPLE_PNG)
    cloud.file("/same.png", SAMPLE_PNG)
    cloud.file("/other.png", other)
    loader = make_loader(None, allow_private_hosts=True)
    keys = [loader.load(f"{cloud.url}/{n}.png").key for n in ("one", "same", "other")]
    assert keys[0] == keys[1] != keys[2]


def test_concurrent_loads_share_one_download(cloud: StubServer) -> None:
    cloud.route("/slow.png", lambda r: (time.sleep(0.15), Response(200, SAMPLE_PNG))[1])
    cloud.route("/bad.png", lambda r: (time.sleep(0.15), Response(200, b"junk"))[1])
    loader = make_loader(None, allow_private_hosts=True)
    results: list[object] = []

    def worker(path: str) -> None:
        try:
            results.append(loader.load(cloud.url + path).key)
        except ImageError as exc:
            results.append(type(exc))

    for path, expected in (("/slow.png", None), ("/bad.png", ImageDecodeError)):
        results.clear()
        threads = [threading.Thread(target=worker, args=(path,)) for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert cloud.count(path) == 1
        assert len(set(results)) == 1 and (expected is None or results[0] is expected)
    # Errors are not cached: a later call tries again.
    with pytest.raises(ImageDecodeError):
        loader.load(cloud.url + "/bad.png")
    assert cloud.count("/bad.png") == 2
