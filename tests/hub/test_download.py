"""vggnet.hub._download: one transfer against a real HTTP server on loopback that drops, stalls and
misbehaves on purpose, and real processes sharing a cache (through the public fetch and load API).

The full-size tests use the session's generated ~528 MiB vgg16 checkpoints (see conftest.py);
everything whose outcome does not depend on size uses a small file.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import pickle
import signal
import socket
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import vggnet.hub._admin as vadmin
import vggnet.hub._download as download
import vggnet.hub._fetching as hub
from tests.helpers import closed_port, file_sha256, fingerprint, leftovers, record, spawn_python
from tests.server import Fault, FaultServer
from vggnet import errors
from vggnet.hub._fetching import OFFICIAL_BASE
from vggnet.models.weights import Weights


def test_a_dropped_connection_is_resumed_with_range(http_server, vgg16_checkpoints, cache):
    ckpt = vgg16_checkpoints.zip
    path = "/" + ckpt.name
    url = http_server.add(path, ckpt.path, Fault.drop(after=300 << 20))
    state = record(url, ckpt, size=ckpt.size).get_state_dict(progress=False)
    assert fingerprint(state) == vgg16_checkpoints.fingerprint
    first, second = http_server.log(path)
    assert first.range is None and first.bytes_sent == 300 << 20
    assert second.status == 206 and second.range is not None
    resumed_at = int(second.range.removeprefix("bytes=").rstrip("-"))
    assert resumed_at > 299 << 20  # at most the last read chunk was lost
    assert second.bytes_sent == ckpt.size - resumed_at < ckpt.size
    assert leftovers(cache) == [ckpt.name, ckpt.name + ".stamp"]
    assert file_sha256(cache / ckpt.name) == ckpt.sha256


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retried_with_backoff(http_server, small_checkpoints, cache, fast_retries, status):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path, Fault.http(status), Fault.http(status))
    assert hub.fetch(url, progress=False) == cache / ckpt.name
    assert [r.status for r in http_server.log()] == [status, status, 200]


def test_429_honours_retry_after(http_server, small_checkpoints, cache):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path, Fault.http(429, {"Retry-After": "1"}))
    started = time.monotonic()
    hub.fetch(url, progress=False)
    assert time.monotonic() - started >= 0.95
    assert [r.status for r in http_server.log()] == [429, 200]


def test_retry_after_is_capped(http_server, small_checkpoints, cache, monkeypatch):
    monkeypatch.setattr(download, "MAX_WAIT", 0.2)
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path, Fault.http(503, {"Retry-After": "3600"}))
    started = time.monotonic()
    hub.fetch(url, progress=False)
    assert time.monotonic() - started < 5


def test_retries_are_bounded(http_server, small_checkpoints, cache, fast_retries):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path, *[Fault.http(503)] * 10)
    with pytest.raises(errors.DownloadError, match="503") as info:
        hub.fetch(url, progress=False, retries=2)
    assert url in str(info.value) and info.value.status == 503
    assert http_server.count("/" + ckpt.name) == 3
    assert leftovers(cache) == []


@pytest.mark.parametrize("status", [404, 403, 410])
def test_client_errors_fail_fast(http_server, small_checkpoints, cache, status):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path, Fault.http(status))
    started = time.monotonic()
    with pytest.raises(errors.DownloadError) as info:
        hub.fetch(url, progress=False)
    assert time.monotonic() - started < 2
    assert str(status) in str(info.value) and url in str(info.value)
    assert info.value.status == status
    assert http_server.count("/" + ckpt.name) == 1
    assert leftovers(cache) == []


def test_wrong_bytes_raise_checksum_error_and_keep_nothing(http_server, small_checkpoints, cache):
    ckpt = small_checkpoints.zip
    wrong = small_checkpoints.legacy.path.read_bytes()
    url = http_server.add("/" + ckpt.name, ckpt.path, Fault.body(wrong))
    with pytest.raises(errors.ChecksumError, match="no file was kept") as info:
        hub.load_state_dict_from_url(url, sha256=ckpt.sha256, progress=False)
    err = info.value
    assert (err.url, err.path, err.expected) == (url, cache / ckpt.name, ckpt.sha256)
    assert err.actual == hashlib.sha256(wrong).hexdigest()
    assert leftovers(cache) == []  # no final file, no partial, no temporary
    assert pickle.loads(pickle.dumps(err)).actual == err.actual  # crosses process boundaries intact


def test_the_full_digest_is_checked_not_only_its_prefix(http_server, small_checkpoints, cache):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path)
    almost = ckpt.sha256[:-1] + ("0" if ckpt.sha256[-1] != "0" else "1")
    with pytest.raises(errors.ChecksumError):
        hub.fetch(url, sha256=almost, progress=False)
    assert leftovers(cache) == []


def test_bytes_beyond_content_length_are_never_read(http_server, small_checkpoints, cache):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path, Fault.extra(b"<html>junk</html>" * 100, announce=True))
    path = hub.fetch(url, sha256=ckpt.sha256, progress=False)
    assert path.stat().st_size == ckpt.size


def test_more_bytes_than_the_record_size_stop_the_download(http_server, small_checkpoints, cache):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path, Fault.extra(b"x" * (4 << 20), announce=False))
    with pytest.raises(errors.DownloadError, match=f"more than the expected {ckpt.size} bytes"):
        record(url, ckpt, size=ckpt.size).get_state_dict(progress=False)
    assert leftovers(cache) == []


def test_an_announced_size_other_than_the_record_size_fails_before_reading(http_server, small_checkpoints, cache):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path, Fault.length(ckpt.size + 1000))
    with pytest.raises(errors.DownloadError, match=f"announces {ckpt.size + 1000} bytes"):
        record(url, ckpt, size=ckpt.size).get_state_dict(progress=False)
    assert leftovers(cache) == []


def test_official_records_are_bounded_by_their_mib_figure(http_server, small_checkpoints, cache, monkeypatch):
    ckpt = small_checkpoints.zip
    http_server.add("/mirror/" + ckpt.name, ckpt.path, Fault.extra(b"x" * (1 << 20), announce=False))
    monkeypatch.setenv("VGGNET_MIRROR", http_server.url("/mirror/"))
    official = Weights(url=OFFICIAL_BASE + ckpt.name, sha256=ckpt.sha256, file_size=round(ckpt.size / 2**20, 3))
    with pytest.raises(errors.DownloadError, match="more than the expected"):
        official.get_state_dict(progress=False)
    assert leftovers(cache) == []


def test_a_stall_beyond_the_read_timeout_is_retried(http_server, cache, fast_retries):
    data = os.urandom(6 << 20)
    url = http_server.add("/stall-file.bin", data, Fault.stall(after=3 << 20, seconds=5))
    started = time.monotonic()
    path = hub.fetch(url, sha256=hashlib.sha256(data).hexdigest(), timeout=(2.0, 0.5), progress=False)
    assert time.monotonic() - started < 4  # did not sit out the 5 s stall
    assert path.read_bytes() == data
    ranges = [r.range for r in http_server.log("/stall-file.bin")]
    assert len(ranges) == 2 and ranges[1] is not None and ranges[1] != "bytes=0-"


def test_a_server_that_ignores_range_restarts_cleanly(http_server, cache, fast_retries):
    data = os.urandom(5 << 20)
    url = http_server.add("/norange.bin", data, Fault.drop(after=3 << 20), Fault.ignore_range())
    path = hub.fetch(url, sha256=hashlib.sha256(data).hexdigest(), progress=False)
    assert path.read_bytes() == data
    _, second = http_server.log("/norange.bin")
    assert second.range is not None and second.status == 200 and second.bytes_sent == len(data)


def test_redirects_are_followed(http_server, small_checkpoints, cache):
    ckpt = small_checkpoints.zip
    http_server.add("/real/" + ckpt.name, ckpt.path)
    url = http_server.add("/moved/" + ckpt.name, b"", Fault.redirect("/real/" + ckpt.name, 301))
    state = hub.load_state_dict_from_url(url, progress=False)
    assert fingerprint(state) == small_checkpoints.fingerprint
    assert [r.status for r in http_server.log()] == [301, 200]


KILLED = r"""
import sys
import vggnet.hub._fetching as hub
hub.fetch(sys.argv[1], sha256=sys.argv[2], progress=False)
"""


@pytest.mark.slow  # a process and a full-size file; the dropped-connection test resumes one in the quick run
def test_sigkill_mid_download_then_the_next_call_resumes(http_server, vgg16_checkpoints, cache):
    ckpt = vgg16_checkpoints.zip
    path = "/" + ckpt.name
    url = http_server.add(path, ckpt.path, rate=150e6)
    victim = spawn_python(KILLED, url, ckpt.sha256)
    deadline = time.monotonic() + 60
    partial: list[Path] = []
    while time.monotonic() < deadline:
        partial = list(cache.glob("*.partial")) if cache.exists() else []
        if partial and partial[0].stat().st_size > 100 << 20:
            break
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert partial, "the download never started"
    assert stat.S_IMODE(partial[0].stat().st_mode) & 0o077 == 0  # private to the user
    assert not (cache / ckpt.name).exists()  # never a file under the final name
    kept = partial[0].stat().st_size
    assert 0 < kept < ckpt.size

    http_server.set_rate(path, None)
    started = time.monotonic()
    got = hub.fetch(url, sha256=ckpt.sha256, progress=False)
    assert time.monotonic() - started < 30  # the dead holder's lock did not block (LOCK_STALL is 120 s)
    assert file_sha256(got) == ckpt.sha256
    resumed = [r for r in http_server.log(path) if r.range is not None]
    assert [r.range for r in resumed] == [f"bytes={kept}-"]
    assert resumed[0].bytes_sent == ckpt.size - kept
    assert leftovers(cache) == [ckpt.name, ckpt.name + ".stamp"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"retries": -1}, "retries must be an integer >= 0"),
        ({"retries": 1.5}, "retries must be an integer >= 0"),
        ({"timeout": 0}, "timeout must be a positive number"),
        ({"timeout": (10.0, -1.0)}, "timeout must be a positive number"),
        ({"timeout": float("nan")}, "timeout must be a positive number"),
        ({"size": 0}, "size must be a positive byte count"),
    ],
)
def test_nonsense_limits_are_refused_before_any_request(http_server, small_checkpoints, cache, kwargs, message):
    url = http_server.add("/limits.pth", small_checkpoints.zip.path)
    with pytest.raises(ValueError, match=message):
        hub.fetch(url, progress=False, **kwargs)
    assert http_server.count("/limits.pth") == 0


def test_fault_server_counts(http_server: FaultServer):
    url = http_server.add("/x", b"0123456789")
    import requests

    assert requests.get(url, headers={"Range": "bytes=4-"}, timeout=5).content == b"456789"
    assert http_server.log("/x")[0].status == 206 and http_server.bytes_served("/x") == 6


# --- issue 11: hostile servers, no network, full disks ----------------------------------------------


class RawServer:
    """A loopback server that answers the n-th connection with the n-th scripted response, byte for byte, then closes.

    A response is bytes, or a callable given the socket (to trickle or stall). Past the script, the last one repeats.
    """

    def __init__(self, *responses: bytes | Callable[[socket.socket], None]) -> None:
        self.responses = list(responses)
        self.requests: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                piece = conn.recv(65536)
                if not piece:
                    return
                head += piece
            self.requests.append(head)
            response = self.responses[min(len(self.requests), len(self.responses)) - 1]
            try:
                if callable(response):
                    response(conn)
                else:
                    conn.sendall(response)
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_server() -> Iterator[Callable[..., RawServer]]:
    servers: list[RawServer] = []

    def make(*responses: bytes | Callable[[socket.socket], None]) -> RawServer:
        servers.append(RawServer(*responses))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def response(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\n{''.join(h + chr(13) + chr(10) for h in headers)}Connection: close\r\n\r\n".encode()
        + body
    )


def test_a_redirect_loop_is_a_download_error_naming_the_url(http_server, small_checkpoints, cache):
    url = http_server.add("/loop-1a2b3c4d.pth", b"", *[Fault.redirect("/loop-1a2b3c4d.pth")] * 30)
    with pytest.raises(errors.DownloadError, match=f"{url} redirects more than 10 times"):
        hub.fetch(url, sha256=small_checkpoints.zip.sha256, progress=False)
    assert leftovers(cache) == []


@pytest.mark.parametrize("target", ["ftp://127.0.0.1/x.pth", "file:///etc/passwd", "gopher://x/y"])
def test_a_redirect_to_another_scheme_is_refused(http_server, small_checkpoints, cache, target):
    url = http_server.add("/" + small_checkpoints.zip.name, small_checkpoints.zip.path, Fault.redirect(target))
    with pytest.raises(errors.DownloadError, match=f"{url} redirects to '{target}', which is not an http"):
        hub.fetch(url, sha256=small_checkpoints.zip.sha256, progress=False)
    assert leftovers(cache) == []


@pytest.fixture
def https_redirect(tmp_path, monkeypatch) -> Iterator[Callable[[str], str]]:
    """An https server on loopback (a self-signed certificate requests is told to trust) that redirects to a URL."""
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key_file), "-out", str(cert_file), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        capture_output=True, text=True,
    )  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"openssl cannot make a certificate here: {made.stderr.strip()}")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert_file))
    targets: dict[str, str] = {}

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", targets[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    def redirect(target: str) -> str:
        path = "/" + target.rsplit("/", 1)[-1]
        targets[path] = target
        return f"https://127.0.0.1:{httpd.server_address[1]}{path}"

    yield redirect
    httpd.shutdown()
    httpd.server_close()


def test_an_https_to_http_downgrade_is_refused_unless_allowed(http_server, small_checkpoints, cache, https_redirect,
                                                              monkeypatch):  # fmt: skip
    ckpt = small_checkpoints.zip
    url = https_redirect(http_server.add("/" + ckpt.name, ckpt.path))
    with pytest.raises(errors.DownloadError, match=f"{url} redirects from https to plain http.*VGGNET_ALLOW_HTTP"):
        hub.fetch(url, sha256=ckpt.sha256, progress=False)
    assert http_server.count("/" + ckpt.name) == 0 and leftovers(cache) == []
    monkeypatch.setenv("VGGNET_ALLOW_HTTP_REDIRECT", "1")
    assert file_sha256(hub.fetch(url, sha256=ckpt.sha256, progress=False)) == ckpt.sha256


def test_an_untrusted_certificate_fails_fast_with_advice(http_server, small_checkpoints, cache, https_redirect,
                                                         monkeypatch):  # fmt: skip
    url = https_redirect(http_server.add("/" + small_checkpoints.zip.name, small_checkpoints.zip.path))
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    started = time.monotonic()
    with pytest.raises(errors.DownloadError, match=f"cannot download {url}: TLS failed.*VGGNET_MIRROR"):
        hub.fetch(url, sha256=small_checkpoints.zip.sha256, progress=False)
    assert time.monotonic() - started < 10


def test_different_content_lengths_are_a_download_error(raw_server, small_checkpoints, cache):
    server = raw_server(response(b"x" * 10, "Content-Length: 10", "Content-Length: 20"))
    url = server.base + "/two-lengths.pth"
    with pytest.raises(errors.DownloadError, match=f"{url}.*Content-Length"):
        hub.fetch(url, sha256=small_checkpoints.zip.sha256, progress=False)
    assert leftovers(cache) == []


def test_a_gzip_body_is_decoded_and_the_decoded_bytes_hashed(raw_server, small_checkpoints, cache):
    ckpt = small_checkpoints.zip
    body = gzip.compress(ckpt.path.read_bytes())
    server = raw_server(response(body, "Content-Encoding: gzip", f"Content-Length: {len(body)}"))
    path = hub.fetch(server.base + "/" + ckpt.name, sha256=ckpt.sha256, size=ckpt.size, progress=False)
    assert file_sha256(path) == ckpt.sha256
    assert b"accept-encoding: identity" in server.requests[0].lower()  # asked for the plain bytes


def test_a_body_cut_short_without_a_length_is_retried(raw_server, small_checkpoints, cache):
    ckpt = small_checkpoints.zip
    data = ckpt.path.read_bytes()
    server = raw_server(response(data[: len(data) // 2]), response(data))  # no Content-Length: EOF ends the body
    path = hub.fetch(server.base + "/" + ckpt.name, sha256=ckpt.sha256, progress=False)
    assert file_sha256(path) == ckpt.sha256 and len(server.requests) == 2


def test_an_empty_body_is_never_cached(http_server, cache):
    url = http_server.add("/empty.bin", b"")
    with pytest.raises(errors.DownloadError, match=f"{url} sent an empty body"):
        hub.fetch(url, progress=False)
    assert leftovers(cache) == []


def test_a_slow_server_is_stopped_by_the_deadline(http_server, cache, monkeypatch):
    data = os.urandom(8 << 20)
    url = http_server.add("/slow.bin", data, rate=1 << 20)  # 8 s at 1 MiB/s: no read waits near the read timeout
    monkeypatch.setenv("VGGNET_DOWNLOAD_DEADLINE", "2.5")
    started = time.monotonic()
    with pytest.raises(errors.DownloadError, match=f"{url}: the download did not finish within 2.5 s.*DEADLINE"):
        hub.fetch(url, sha256=hashlib.sha256(data).hexdigest(), progress=False)
    assert time.monotonic() - started < 6
    (kept,) = [e for e in vadmin.cached_files() if e.kind == "partial"]  # what arrived, resumed by the next call
    assert 0 < kept.size < len(data)


def test_headers_sent_a_byte_at_a_time_are_stopped_by_the_deadline(raw_server, cache, monkeypatch):
    def dribble(conn: socket.socket) -> None:  # a byte every 0.1 s (inside the 1 s read timeout) for 10 s
        for byte in b"HTTP/1.1 200 OK\r\n" + b"X-Wait: 0\r\n" * 8:
            conn.sendall(bytes([byte]))
            time.sleep(0.1)

    url = raw_server(dribble).base + "/dribble-0a1b2c3d.pth"
    monkeypatch.setenv("VGGNET_DOWNLOAD_DEADLINE", "2")
    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    started = time.monotonic()
    with pytest.raises(errors.DownloadError, match=f"{url}: the download did not finish within 2 s.*DEADLINE"):
        hub.fetch(url, sha256="0a1b2c3d" * 8, progress=False, timeout=(5, 1))
    assert time.monotonic() - started < 4
    assert leftovers(cache) == []
    assert not [t for t in threading.enumerate() if isinstance(t, threading.Timer)]  # the watchdog is gone
    while fds is not None and len(os.listdir("/proc/self/fd")) > fds and time.monotonic() < started + 6:
        time.sleep(0.05)  # the server's end closes at its next byte
    assert fds is None or len(os.listdir("/proc/self/fd")) <= fds  # and so are the connection's sockets


def test_a_download_of_unknown_size_stops_at_the_cap(http_server, small_checkpoints, cache, monkeypatch):
    url = http_server.add("/endless.bin", small_checkpoints.zip.path, Fault.extra(b"", announce=False))
    monkeypatch.setenv("VGGNET_DOWNLOAD_MAX_BYTES", "100000")
    with pytest.raises(errors.DownloadError, match=f"{url} sent more than the expected 100000 bytes.*MAX_BYTES"):
        hub.fetch(url, progress=False)
    assert leftovers(cache) == []
    assert download.MAX_BYTES == 2 << 30  # the documented default


def test_a_malformed_limit_setting_names_the_variable(http_server, small_checkpoints, cache, monkeypatch):
    url = http_server.add("/" + small_checkpoints.zip.name, small_checkpoints.zip.path)
    monkeypatch.setenv("VGGNET_DOWNLOAD_DEADLINE", "soon")
    with pytest.raises(ValueError, match="VGGNET_DOWNLOAD_DEADLINE='soon' must be a positive number"):
        hub.fetch(url, progress=False)


FSIZE_FETCH = """
import resource, signal, sys
import vggnet.hub._fetching as hub
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (100000, 100000))
try:
    hub.fetch(sys.argv[1], sha256=sys.argv[2], progress=False)
except OSError as err:
    print(err)
    sys.exit(3)
"""


def test_a_full_disk_names_the_folder_and_keeps_nothing(http_server, small_checkpoints, cache):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path)
    proc = spawn_python(FSIZE_FETCH, url, ckpt.sha256)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert f"no room to download {ckpt.name} into {cache}" in out and f"needs {ckpt.size:,} bytes" in out
    assert "VGGNET_HOME" in out and leftovers(cache) == []


def test_a_full_tmpfs_names_the_folder_and_keeps_nothing(http_server, small_checkpoints, cache):
    ckpt = small_checkpoints.zip
    url = http_server.add("/" + ckpt.name, ckpt.path)
    cache.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(cache)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("cannot mount a tmpfs here")
    try:
        with pytest.raises(OSError, match=f"no room to download {ckpt.name} into {cache}.*needs {ckpt.size:,} bytes"):
            hub.fetch(url, sha256=ckpt.sha256, progress=False)
        assert [e.kind for e in vadmin.cached_files()] in ([], ["lock"])
        assert sum(e.size for e in vadmin.cached_files()) == 0
    finally:
        subprocess.run(["umount", str(cache)], check=True, capture_output=True)


@pytest.mark.parametrize("host", ["closed-port", "nonexistent.invalid"])
def test_no_network_fails_fast_and_says_what_to_do(small_checkpoints, cache, host):
    netloc = f"127.0.0.1:{closed_port()}" if host == "closed-port" else host
    url = f"http://{netloc}/{small_checkpoints.zip.name}"
    started = time.monotonic()
    with pytest.raises(errors.DownloadError) as info:
        hub.fetch(url, sha256=small_checkpoints.zip.sha256, progress=False)
    assert time.monotonic() - started < 10  # no 30-40 s of retries
    message = str(info.value)
    why = "the connection was refused" if host == "closed-port" else "the host name does not resolve"
    assert message.startswith(f"cannot download {url}: {why}")
    for advice in (str(cache), "VGGNET_MIRROR", "VGGNET_OFFLINE", "--weights none"):
        assert advice in message
