"""``psegzoo serve`` over real HTTP: a real uvicorn on 127.0.0.1, real clients, synthetic models.

The module's server is the console script in a child process (as users start it), loading its
model from a loopback zoo; the token, queue and ``--any-model`` cases run
:func:`psegzoo.serve.make_server` in a thread around a model loaded here.
"""
from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

import psegzoo
from tests.support.cli import run_script
from tests.support.hub import scrub_environment
from tests.support.serving import (
    EXTRA,
    MODEL,
    OTHER,
    assert_labels_agree,
    decode_png,
    healthy,
    in_thread,
    png_bytes,
    random_image,
    serve_zoo,
    start_process,
)

MAX_BYTES = 200_000
MAX_PIXELS = 100_000


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    mp = pytest.MonkeyPatch()
    scrub_environment(mp)
    made = serve_zoo(tmp)
    for key, value in made.env.items():
        mp.setenv(key, value)
    try:
        yield made
    finally:
        made.server.close()
        mp.undo()


@pytest.fixture(scope="module")
def server(zoo):
    """The console script serving MODEL; a request waits up to 300 ms for others to share its forward."""
    proc = start_process(zoo.env, "--model", MODEL, "--max-batch", "8", "--max-wait-ms", "300",
                         "--max-bytes", str(MAX_BYTES), "--max-pixels", str(MAX_PIXELS))
    try:
        yield proc.url
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def segmenter(zoo):
    return psegzoo.load(MODEL, progress=False)


def post(url: str, data: bytes, params: dict | None = None, **headers: str) -> requests.Response:
    return requests.post(f"{url}/v1/predict", data=data, params=params or {},
                         headers={"Content-Type": "image/png", **headers}, timeout=60)


def labels_of(response: requests.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    im = decode_png(response.content)
    assert im.mode == "P"
    return np.asarray(im)


def test_labels_are_predicts(server, zoo, segmenter, tmp_path):
    rgb = random_image(0)
    (tmp_path / "a.png").write_bytes(png_bytes(rgb))
    run_script("predict", "-q", "--model", MODEL, tmp_path / "a.png", "-o", tmp_path / "out", extra_env=zoo.env)
    with Image.open(tmp_path / "out" / "a.png") as im:
        cli_labels, cli_palette = np.asarray(im), im.getpalette()
    response = post(server, png_bytes(rgb))
    assert decode_png(response.content).getpalette() == cli_palette
    ref = segmenter.predict(rgb)
    # the server and the CLI run in other processes than the reference: near-ties may round differently
    assert_labels_agree(labels_of(response), ref.labels, ref.scores)
    assert_labels_agree(cli_labels, ref.labels, ref.scores)
    if np.array_equal(labels_of(response), cli_labels):  # then the answer is predict's file, byte for byte
        assert response.content == (tmp_path / "out" / "a.png").read_bytes()
    as_field = requests.post(f"{server}/v1/predict", files={"image": ("a.png", png_bytes(rgb), "image/png")}, timeout=60)
    assert np.array_equal(labels_of(as_field), labels_of(response))  # one process, one path: the same labels


def test_json_overlay_and_models(server, segmenter):
    rgb = random_image(1)
    doc = post(server, png_bytes(rgb), {"format": "json", "overlay": "true"}).json()
    assert (doc["width"], doc["height"], doc["model"]) == (60, 40, MODEL)
    assert sum(c["pixels"] for c in doc["classes"]) == 40 * 60
    assert all(c["color"] == list(segmenter.palette[c["index"]]) for c in doc["classes"])
    assert doc["settings"]["mode"] == "whole" and doc["settings"]["flip"] is False
    overlay = decode_png(__import__("base64").b64decode(doc["overlay_png"]))
    assert (overlay.mode, overlay.size) == ("RGB", (60, 40))
    plain = post(server, png_bytes(rgb), {"format": "overlay", "opacity": "0"})
    assert np.array_equal(np.asarray(decode_png(plain.content)), rgb)  # opacity 0 is the image itself
    flipped = post(server, png_bytes(rgb), {"format": "json", "flip": "true", "scale": "96x48"}).json()
    assert flipped["settings"]["flip"] is True and flipped["settings"]["scale"] == [96, 48]
    models = requests.get(f"{server}/v1/models", timeout=10).json()
    assert [m["name"] for m in models["served"]] == [MODEL] and models["any_model"] is False
    assert len(models["served"][0]["classes"]) == len(models["served"][0]["palette"]) == 19


def test_concurrent_requests_are_batched_with_serial_labels(server, segmenter):
    images = [random_image(10 + i) for i in range(8)]
    serial = [labels_of(post(server, png_bytes(rgb))) for rgb in images]
    before = _batches(server)
    barrier = threading.Barrier(8)

    def one(rgb: np.ndarray) -> np.ndarray:
        barrier.wait()
        return labels_of(post(server, png_bytes(rgb)))

    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(one, images))
    for rgb, alone, batched in zip(images, serial, together):
        ref = segmenter.predict(rgb)
        assert_labels_agree(alone, ref.labels, ref.scores)
        assert_labels_agree(batched, alone, ref.scores)  # a batch may round differently: near-ties only
    after = _batches(server)
    assert after["count"] - before["count"] < 8  # fewer forwards than requests
    assert after["sum"] - before["sum"] == 8


def _batches(url: str) -> dict[str, float]:
    text = requests.get(f"{url}/metrics", timeout=10).text
    found = {"count": 0.0, "sum": 0.0}
    for line in text.splitlines():
        if line.startswith("psegzoo_batch_size_count"):
            found["count"] = float(line.split()[-1])
        elif line.startswith("psegzoo_batch_size_sum"):
            found["sum"] = float(line.split()[-1])
    assert "# TYPE psegzoo_queue_depth gauge" in text and 'psegzoo_requests_total{endpoint="/v1/predict",status="200"}' in text
    return found


def _big_image() -> bytes:  # 400 x 300 = 120000 pixels > MAX_PIXELS, a few hundred bytes as PNG
    return png_bytes(np.zeros((300, 400, 3), np.uint8))


BAD = [
    ("not an image type", dict(data=b"hello", headers={"Content-Type": "text/plain"}), 415),
    ("undecodable", dict(data=b"\x89PNG\r\n\x1a\nnot really"), 400),
    ("empty", dict(data=b""), 400),
    ("unknown model", dict(params={"model": "no_such_model_anywhere"}), 404),
    ("model not served", dict(params={"model": OTHER}), 404),
    ("body too large", dict(data=b"x" * (MAX_BYTES + 1)), 413),
    ("too many pixels", dict(data=_big_image()), 413),
    ("bad mode", dict(params={"mode": "sideways"}), 422),
    ("bad scale", dict(params={"scale": "big"}), 422),
    ("scale out of bounds", dict(params={"scale": "9999999x1"}), 422),
    ("bad format", dict(params={"format": "gif"}), 422),
    ("bad flag", dict(params={"flip": "maybe"}), 422),
    ("unknown parameter", dict(params={"colour": "red"}), 422),
    ("multipart without image", dict(files={"picture": ("a.png", b"x", "image/png")}), 400),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_gets_its_status_and_a_json_error(server, case):
    _, request, status = case
    kwargs = dict(request)
    if "files" not in kwargs:
        kwargs.setdefault("data", png_bytes(random_image(2)))
        kwargs["headers"] = {"Content-Type": "image/png", **kwargs.get("headers", {})}
    response = requests.post(f"{server}/v1/predict", timeout=60, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error and "\n" not in error and "Traceback" not in error
    assert healthy(server)


def test_body_limit_is_checked_while_it_streams(server):
    """A chunked body over the limit is refused before the client has finished sending it."""
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * (MAX_BYTES + 1)
        sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")  # no last chunk: the body never ends
        answer = _read_answer(sock)
    assert answer.startswith("HTTP/1.1 413"), answer
    assert json.loads(answer.split("\r\n\r\n", 1)[1])["error"].startswith("request body is larger")
    assert healthy(server)


def _read_answer(sock: socket.socket) -> str:
    """One HTTP answer with a Content-Length body, read to its end."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode("latin-1")


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def test_unknown_endpoint_is_a_json_404(server):
    response = requests.get(f"{server}/v2/anything", timeout=10)
    assert response.status_code == 404 and "error" in response.json()


def test_token_and_sigterm_finishes_requests_in_flight(zoo):
    """A real process: the token from PSEGZOO_SERVE_TOKEN guards all but /healthz and the page;
    SIGTERM lets the request in flight (waiting 1.5 s for a batch) finish before the process exits."""
    proc = start_process({**zoo.env, "PSEGZOO_SERVE_TOKEN": "s3cret"}, "--model", MODEL, "--max-wait-ms", "1500")
    try:
        url = proc.url
        assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
        assert requests.get(f"{url}/", timeout=10).status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            refused = requests.get(f"{url}/v1/models", headers=headers, timeout=10)
            assert refused.status_code == 401 and "token" in refused.json()["error"]
        assert post(url, png_bytes(random_image(3))).status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        assert requests.get(f"{url}/v1/models", headers=auth, timeout=10).status_code == 200
        with ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            pending = pool.submit(post, url, png_bytes(random_image(3)), None, **auth)
            time.sleep(0.5)  # the request is in, waiting for a batch
            proc.proc.send_signal(signal.SIGTERM)
            response = pending.result(timeout=60)
        assert time.monotonic() - started >= 1.4
        assert labels_of(response).shape == (40, 60)
        assert proc.proc.wait(30) in (0, -signal.SIGTERM)
        assert "Traceback" not in "".join(proc.lines)
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{url}/healthz", timeout=5)
    finally:
        proc.stop()


def test_full_queue_answers_503_with_retry_after(zoo, segmenter):
    with in_thread({MODEL: segmenter}, models=(MODEL,), queue=1, max_batch=8, max_wait_ms=2000) as url:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(post, url, png_bytes(random_image(4)))
            deadline = time.monotonic() + 10
            while requests.get(f"{url}/healthz", timeout=10).json()["queue"] < 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            busy = post(url, png_bytes(random_image(5)))
            assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
            assert "busy" in busy.json()["error"]
            assert labels_of(first.result(timeout=60)).shape == (40, 60)
        assert "psegzoo_queue_rejected_total 1" in requests.get(f"{url}/metrics", timeout=10).text


def test_any_model_loads_on_first_use_and_only_then(zoo, segmenter):
    with in_thread({MODEL: segmenter}, models=(MODEL,)) as url:
        assert post(url, png_bytes(random_image(6)), {"model": EXTRA}).status_code == 404
    assert zoo.gets(EXTRA) == 0  # without --any-model a request never makes the server download
    with in_thread({}, any_model=True) as url:
        assert post(url, png_bytes(random_image(6))).status_code == 404  # no default model to pick
        answers = [post(url, png_bytes(random_image(6)), {"model": EXTRA}) for _ in range(2)]
        assert [a.status_code for a in answers] == [200, 200]
        assert EXTRA in requests.get(f"{url}/v1/models", timeout=10).json()["available"]
    assert zoo.gets(EXTRA) == 1


def test_groups_gathered_while_the_device_is_busy_go_together():
    """Requests that arrive while a forward runs, each alone past its wait, share the next forward."""
    from psegzoo.serve.batching import Batcher

    calls: list[list[int]] = []
    device_busy = threading.Event()

    def run(key: str, items: list[int]) -> list[int]:
        calls.append(list(items))
        if len(calls) == 1:
            device_busy.wait(10)
        return [10 * i for i in items]

    async def scenario() -> list[int]:
        batcher = Batcher(run, max_batch=8, max_wait=0.001, capacity=64)
        first = asyncio.ensure_future(batcher.submit("k", 0))
        waiting = []
        for i in range(1, 4):
            await asyncio.sleep(0.05)  # each later request waits past max_wait: a group of its own
            waiting.append(asyncio.ensure_future(batcher.submit("k", i)))
        await asyncio.sleep(0.05)
        device_busy.set()
        results = await asyncio.gather(first, *waiting)
        await batcher.close()
        return list(results)

    assert asyncio.run(scenario()) == [0, 10, 20, 30]
    assert calls == [[0], [1, 2, 3]]


def test_an_error_fails_only_its_own_request():
    """One item's error reaches its request only; a group that fails as a whole fails each of its requests."""
    from psegzoo.serve.batching import Batcher

    def run(key: str, items: list[int]) -> list[object]:
        if key == "broken":
            raise RuntimeError("the device fell over")
        return [psegzoo.PredictionError(f"input {i}: prediction failed") if i == 2 else i for i in items]

    async def scenario() -> list[object]:
        batcher = Batcher(run, max_batch=4, max_wait=0.05, capacity=64)
        calls = [batcher.submit("k", i) for i in range(4)] + [batcher.submit("broken", 9)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        await batcher.close()
        return results

    results = asyncio.run(scenario())
    assert results[:2] == [0, 1] and results[3] == 3
    assert isinstance(results[2], psegzoo.PredictionError) and isinstance(results[4], RuntimeError)


def test_exposed_without_token_warns(segmenter, caplog):
    settings = psegzoo.serve.ServeSettings.from_args(models=(MODEL,), host="0.0.0.0", environ={})
    psegzoo.serve.make_server(settings, {MODEL: segmenter})
    assert "without a token" in caplog.text
    caplog.clear()
    settings = psegzoo.serve.ServeSettings.from_args(models=(MODEL,), host="0.0.0.0", token="t", environ={})
    psegzoo.serve.make_server(settings, {MODEL: segmenter})
    assert "without a token" not in caplog.text


def test_without_the_extra_one_line_names_the_install():
    code = ("import sys; sys.modules['fastapi'] = None; from psegzoo.cli import main; "
            "main(['serve', '--model', 'x'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "pip install 'psegzoo[serve]'" in proc.stderr and "fastapi" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_bad_settings_are_one_line(zoo):
    proc = run_script("serve", "--port", "1", code=1, extra_env=zoo.env, timeout=60)
    assert "nothing to serve" in proc.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        proc = run_script("serve", "--model", MODEL, "--port", taken.getsockname()[1], code=1, extra_env=zoo.env,
                          timeout=60)
    assert "cannot listen on 127.0.0.1" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


