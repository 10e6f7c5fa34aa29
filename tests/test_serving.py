"""Serving: a real `mlflow models serve` of the registered champion, spoken to over HTTP."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from helpers import ROOT, free_port, http_process, load_script, venv_env
from PIL import Image

from fmnist_mlops.config.schema import CLASS_NAMES
from fmnist_mlops.data.splits import load_prepared
from fmnist_mlops.runtime.paths import PREDICTIONS_CSV
from fmnist_mlops.serving.prediction import to_fashion_mnist

MODEL_URI = "models:/fashion-mnist-cnn@champion"
# Tests of the module's one model server run in one test process (xdist), which starts it once.
ONE_SERVER = pytest.mark.xdist_group("model-server")


@pytest.fixture(scope="session")
def champion(shared_champion):
    """The session's smoke-trained, evaluated and promoted model: only read here."""
    return shared_champion


@pytest.fixture(scope="session")
def server(champion, tmp_path_factory):
    port = free_port()
    env = venv_env(
        MLFLOW_TRACKING_URI=champion.mlflow.tracking_uri,
        MLFLOW_ALLOW_PICKLE_DESERIALIZATION="false",  # our model must not need pickle
    )
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "models",
        "serve",
        "-m",
        MODEL_URI,
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with http_process(cmd, env, f"{url}/ping", log):
        yield url


def post(url: str, body: bytes | str, content_type: str = "application/json"):
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(
        f"{url}/invocations", data=data, headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@ONE_SERVER
@pytest.mark.integration
def test_served_answers_equal_pyfunc_and_evaluate(server, champion, smoke_prepared):
    splits = load_prepared(smoke_prepared)
    idx = list(range(12))
    images = splits.x_test[idx]
    status, body = post(server, json.dumps({"inputs": images.tolist(), "params": {"top_k": 3}}))
    assert status == 200, body[:500]
    served = json.loads(body)["predictions"]
    assert len(served) == len(idx)

    mlflow.set_tracking_uri(champion.mlflow.tracking_uri)
    mlflow.set_registry_uri(champion.mlflow.tracking_uri)
    local = mlflow.pyfunc.load_model(MODEL_URI).predict(images.astype(np.float32))
    for s, loc in zip(served, local, strict=True):
        np.testing.assert_allclose(s["probabilities"], loc["probabilities"], atol=1e-5)
        assert s["class"] == CLASS_NAMES[s["index"]] and s["probability"] == max(s["probabilities"])
        assert [t["index"] for t in s["top_k"]][0] == s["index"] and len(s["top_k"]) == 3
        assert sum(s["probabilities"]) == pytest.approx(1.0, abs=1e-4)
    with open(Path(champion.paths.out) / PREDICTIONS_CSV) as fh:
        saved = list(csv.DictReader(fh))
    assert [s["class"] for s in served] == [saved[i]["predicted"] for i in idx]


@ONE_SERVER
@pytest.mark.integration
def test_integer_and_float_pixels_single_image(server, smoke_prepared):
    image = load_prepared(smoke_prepared).x_test[0]
    ints = json.loads(post(server, json.dumps({"inputs": [image.tolist()]}))[1])
    floats = json.loads(post(server, json.dumps({"inputs": [(image.astype(float)).tolist()]}))[1])
    assert ints == floats and "top_k" not in ints["predictions"][0]
    instances = json.loads(post(server, json.dumps({"instances": [image.tolist()]}))[1])
    assert instances == ints


IMG = [[0] * 28] * 28
BAD_REQUESTS = [
    ("flat 784", json.dumps({"inputs": [[0] * 784]}), "application/json", 400, "shape"),
    ("channel axis", json.dumps({"inputs": [[[[0]] * 28] * 28]}), "application/json", 400, "shape"),
    ("32x32", json.dumps({"inputs": [[[0] * 32] * 32]}), "application/json", 400, "shape"),
    ("text pixels", json.dumps({"inputs": [[["a"] * 28] * 28]}), "application/json", 400, ""),
    (
        "NaN",
        json.dumps({"inputs": [[[float("nan")] * 28] * 28]}),
        "application/json",
        400,
        "NaN/inf",
    ),
    (
        "inf",
        json.dumps({"inputs": [[[float("inf")] * 28] * 28]}),
        "application/json",
        400,
        "NaN/inf",
    ),
    ("above 255", json.dumps({"inputs": [[[300] * 28] * 28]}), "application/json", 400, "0-255"),
    ("negative", json.dumps({"inputs": [[[-1] * 28] * 28]}), "application/json", 400, "0-255"),
    (
        "long floats out of range",  # MLflow would echo all 784 of them: > 7 KB
        json.dumps({"inputs": [[[255.12345678901234] * 28] * 28]}),
        "application/json",
        400,
        "0-255",
    ),
    ("empty list", json.dumps({"inputs": []}), "application/json", 400, ""),
    ("missing inputs", json.dumps({"pixels": [IMG]}), "application/json", 400, ""),
    (
        "top_k too big",
        json.dumps({"inputs": [IMG], "params": {"top_k": 11}}),
        "application/json",
        400,
        "top_k",
    ),
    (
        "top_k not int",
        json.dumps({"inputs": [IMG], "params": {"top_k": "x"}}),
        "application/json",
        400,
        "top_k",
    ),
    ("malformed JSON", '{"inputs": [[[0, 1', "application/json", 400, ""),
    ("wrong content type", json.dumps({"inputs": [IMG]}), "text/plain", 415, ""),
]


@ONE_SERVER
@pytest.mark.integration
@pytest.mark.parametrize(
    ("name", "body", "ctype", "status", "needle"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_input_gets_a_small_4xx_and_the_server_keeps_serving(
    server, name, body, ctype, status, needle
):
    code, reply = post(server, body, ctype)
    assert code == status, reply[:500]
    text = reply.decode(errors="replace")
    assert needle in text
    if name != "malformed JSON":  # MLflow's own JSON handler echoes the payload (documented)
        assert len(reply) < 4096, f"{len(reply)} bytes: {text[:300]}"
    ok, _ = post(server, json.dumps({"inputs": [IMG]}))
    assert ok == 200


def raw_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """POST with exactly ``headers``: the measuring tool's client (tools/serving_contract.py)."""
    return load_script("tools/serving_contract.py").post(url, body, headers)


@pytest.mark.integration
def test_python_callers_may_pass_raw_integer_pixels(champion, smoke_prepared):
    mlflow.set_tracking_uri(champion.mlflow.tracking_uri)
    mlflow.set_registry_uri(champion.mlflow.tracking_uri)
    options = np.get_printoptions()
    model = mlflow.pyfunc.load_model(MODEL_URI)
    assert np.get_printoptions() == options, "loading the model changed NumPy's print options"
    raw = load_prepared(smoke_prepared).x_test[:8]  # uint8, as in the IDX files and images
    want = model.predict(raw.astype(np.float32), params={"top_k": 2})
    for x in (raw, raw.astype(np.int64), raw.astype(np.float64), raw.tolist()):
        got = model.predict(x, params={"top_k": 2})
        assert [g["class"] for g in got] == [w["class"] for w in want]
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g["probabilities"], w["probabilities"], atol=1e-6)
    assert np.get_printoptions() == options


def http_formats(images: np.ndarray) -> dict[str, tuple[str, str]]:
    """Every request format the README promises, for the same images: (content type, body)."""
    flat = images.reshape(len(images), -1).tolist()
    columns = [f"p{i}" for i in range(784)]
    csv_rows = [",".join(columns)] + [",".join(str(v) for v in row) for row in flat]
    return {
        "inputs": ("application/json", json.dumps({"inputs": images.tolist()})),
        "instances": ("application/json", json.dumps({"instances": images.tolist()})),
        "dataframe_split, 784 columns": (
            "application/json",
            json.dumps({"dataframe_split": {"columns": columns, "data": flat}}),
        ),
        "dataframe_split, one column of 784-value lists": (
            "application/json",
            json.dumps({"dataframe_split": {"columns": ["image"], "data": [[r] for r in flat]}}),
        ),
        "dataframe_records, 784 keys": (
            "application/json",
            json.dumps({"dataframe_records": [dict(zip(columns, r, strict=True)) for r in flat]}),
        ),
        "CSV, 784 columns": ("text/csv", "\n".join(csv_rows) + "\n"),
    }


@ONE_SERVER
@pytest.mark.integration
def test_every_documented_request_format_gives_the_same_answers(server, smoke_prepared):
    images = load_prepared(smoke_prepared).x_test[:3]
    answers = {}
    for name, (ctype, body) in http_formats(images).items():
        status, reply = post(server, body, ctype)
        assert status == 200, (name, reply[:300])
        answers[name] = [p["class"] for p in json.loads(reply)["predictions"]]
    assert len({tuple(a) for a in answers.values()}) == 1, answers


UNSUPPORTED = [
    ("CSV, 5 columns", "text/csv", "a,b,c,d,e\n1,2,3,4,5\n", "5 columns"),
    ("named inputs", "application/json", json.dumps({"inputs": {"x": IMG}}), "named inputs"),
    (
        "dataframe_split, 2 columns",
        "application/json",
        json.dumps({"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2]]}}),
        "2 columns",
    ),
]


@ONE_SERVER
@pytest.mark.integration
@pytest.mark.parametrize(
    ("name", "ctype", "body", "needle"), UNSUPPORTED, ids=[u[0] for u in UNSUPPORTED]
)
def test_unsupported_formats_get_a_400_that_names_the_accepted_ones(
    server, name, ctype, body, needle
):
    status, reply = post(server, body, ctype)
    assert status == 400, reply[:300]
    text = reply.decode()
    assert needle in text and "784" in text and len(reply) < 4096


@ONE_SERVER
@pytest.mark.slow  # a 35 MB request and a 10 s wait
def test_memory_falls_back_after_a_10000_image_request(server):
    port = int(server.rsplit(":", 1)[1])
    post(server, json.dumps({"inputs": [IMG]}))
    idle = serving_rss(port)
    images = np.random.default_rng(0).integers(0, 256, (10_000, 28, 28))
    status, body = post(server, json.dumps({"inputs": images.tolist()}))
    assert status == 200 and len(json.loads(body)["predictions"]) == 10_000
    time.sleep(10)
    after = serving_rss(port)
    assert after - idle < 300 * 2**20, f"RSS {idle / 2**20:.0f} -> {after / 2**20:.0f} MB"


# ----------------------------------------------------------------------------- predict CLI


def test_photo_polarity_is_inverted_to_fashion_mnist_style():
    garment = np.zeros((28, 28), dtype=np.uint8)
    garment[6:22, 9:19] = 200  # light garment on black, as in the dataset
    photo = Image.fromarray(255 - garment).resize(
        (84, 84), Image.Resampling.NEAREST
    )  # dark on white
    converted = to_fashion_mnist(photo)
    assert converted.shape == (28, 28)
    assert np.abs(converted - garment).max() <= 1
    kept = to_fashion_mnist(Image.fromarray(garment))
    assert np.abs(kept - garment).max() < 1e-3
    wide = to_fashion_mnist(
        Image.fromarray(np.full((20, 60), 255, dtype=np.uint8)), polarity="keep"
    )
    assert wide[0].max() == 0 and wide[14].min() > 200, "aspect ratio kept by padding"


@pytest.mark.integration
def test_predict_cli_reads_images_and_walks_through_test_samples(
    champion, smoke_prepared, tmp_path
):
    splits = load_prepared(smoke_prepared)
    files = []
    for i in range(3):
        photo = Image.fromarray(255 - splits.x_test[i]).resize((112, 112), Image.Resampling.NEAREST)
        path = tmp_path / f"item{i}.png"
        photo.convert("RGB").save(path)
        files.append(path)
    photo.convert("RGB").save(tmp_path / "item.jpg", quality=95)
    mlflow.set_tracking_uri(champion.mlflow.tracking_uri)
    mlflow.set_registry_uri(champion.mlflow.tracking_uri)
    expected = mlflow.pyfunc.load_model(MODEL_URI).predict(splits.x_test[:3].astype(np.float32))

    def predict(*args: str) -> subprocess.CompletedProcess:
        cmd = [
            sys.executable,
            "src/predict.py",
            *args,
            "--tracking-uri",
            champion.mlflow.tracking_uri,
        ]
        return subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, env=venv_env(), timeout=180
        )

    result = predict(*map(str, files), str(tmp_path / "item.jpg"))
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["file", "class", "probability"]
    for line, exp in zip(lines[1:4], expected, strict=True):
        assert exp["class"] in line
    assert "item.jpg" in lines[4] and any(name in lines[4] for name in CLASS_NAMES)

    walk = predict("--test-samples", "2")
    assert walk.returncode == 0, walk.stderr[-2000:]
    assert walk.stdout.count("test image") == 2 and walk.stdout.count("true ") == 2

    missing = predict(str(tmp_path / "nope.png"))
    assert missing.returncode == 2 and "nope.png: not a readable image" in missing.stderr


# ----------------------------------------------------------------------------- reverse proxy


def serving_rss(port: int) -> int:
    """Resident memory of the MLflow serving process tree listening on ``port``."""

    from fmnist_mlops.serving.model_server import listeners

    total = 0
    for proc in listeners(port):
        tree = [proc, *proc.children(recursive=True)]
        parent = proc.parent()
        if parent is not None and "mlflow" in " ".join(parent.cmdline()):
            tree.append(parent)
        total += sum(p.memory_info().rss for p in tree if p.is_running())
    return total


@ONE_SERVER
@pytest.mark.integration
def test_reverse_proxy_refuses_huge_bodies_and_memory_stays_flat(server):
    import shutil
    import socket
    import tempfile

    render = load_script("deploy/nginx/render.py").render

    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(nginx).exists(), "nginx missing: `apt-get install nginx` (.ci/run does)"
    prefix = Path(tempfile.mkdtemp(prefix="fmnist-proxy-"))
    prefix.chmod(0o755)  # nginx workers run as an unprivileged user
    port = free_port()
    conf = render(f"127.0.0.1:{port}", server.removeprefix("http://"), prefix)
    proxy = subprocess.Popen(
        [nginx, "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proxy.poll() is None and time.monotonic() < deadline, proxy.stdout.read()
                time.sleep(0.2)
        via_proxy = f"http://127.0.0.1:{port}"
        img = [[0] * 28] * 28
        status, body = post(via_proxy, json.dumps({"inputs": [img]}))
        assert status == 200 and json.loads(body)["predictions"][0]["class"] in CLASS_NAMES
        payload = json.dumps({"inputs": [img]}).encode()
        for headers in ({}, {"Content-Type": "text/plain"}, {"Content-Type": "application/xml"}):
            status, body = raw_post(via_proxy, payload, headers)
            assert status == 415 and b"Content-Type must be" in body, (headers, status, body)
        status, body = raw_post(
            via_proxy, payload, {"Content-Type": "application/json; charset=utf-8"}
        )
        assert status == 200, body[:300]
        for method, path, code in (("GET", "/invocations", 403), ("POST", "/admin", 404)):
            req = urllib.request.Request(f"{via_proxy}{path}", method=method, data=None)
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(req, timeout=30)
            assert err.value.code == code, (method, path, err.value.code)

        server_port = int(server.rsplit(":", 1)[1])
        before = serving_rss(server_port)
        huge = b'{"inputs": [' + b"0," * 10_000_000 + b"0]}"  # 20 MB
        answered = 0
        for _ in range(3):
            try:
                status, body = post(via_proxy, huge)
            except (ConnectionError, urllib.error.URLError):
                continue  # nginx may close while the client still sends: refused all the same
            assert status == 413, body[:300]
            assert len(body) < 2048
            answered += 1
        assert answered, "nginx answered 413 at least once"
        after = serving_rss(server_port)
        assert after - before < 20 * 2**20, f"RSS grew {(after - before) / 2**20:.1f} MB"
        status, _ = post(via_proxy, json.dumps({"inputs": [img]}))
        assert status == 200, "still serving"
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)
        shutil.rmtree(prefix, ignore_errors=True)  # not pytest's tmp_path: nginx needs 0o755


@pytest.mark.slow
def test_the_champion_runs_in_a_new_venv_built_only_from_its_own_requirements(
    champion, smoke_prepared, tmp_path
):
    """What `mlflow models serve` or a Dockerfile rebuilds: the model's requirements.txt alone,
    outside the project, gives the same probabilities."""
    mlflow.set_tracking_uri(champion.mlflow.tracking_uri)
    mlflow.set_registry_uri(champion.mlflow.tracking_uri)
    requirements = Path(mlflow.pyfunc.get_model_dependencies(MODEL_URI))
    lines = requirements.read_text().splitlines()
    assert not (requirements.parent / "uv.lock").exists(), "the project's lock is not the model's"
    assert any(line.startswith("tensorflow-cpu==") and "x86_64" in line for line in lines)
    assert any(line.startswith("tensorflow==") and "platform_machine !=" in line for line in lines)
    images = load_prepared(smoke_prepared).x_test[:16]
    want = mlflow.pyfunc.load_model(MODEL_URI).predict(images)
    np.save(tmp_path / "images.npy", images)
    uv = str(Path(sys.executable).parent / "uv")
    env_dir = tmp_path / "model-env"
    # The machine's certificates and proxies stay; this project's venv and settings do not.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "VIRTUAL_ENV", "PYTHON", "DVC_"))
    }
    env.update(PATH="/usr/bin:/bin", MLFLOW_TRACKING_URI=champion.mlflow.tracking_uri)
    for cmd in (
        [uv, "venv", "-q", "--python", sys.executable, str(env_dir)],
        [
            uv,
            "pip",
            "install",
            "-q",
            "--python",
            str(env_dir / "bin" / "python"),
            "-r",
            str(requirements),
        ],
    ):
        subprocess.run(cmd, cwd=tmp_path, env=env, check=True, timeout=900)
    script = (
        "import json, sys, mlflow, numpy as np\n"
        "try:\n    import fmnist_mlops\n    sys.exit('the project leaked into the model env')\n"
        "except ImportError:\n    pass\n"
        f"out = mlflow.pyfunc.load_model({MODEL_URI!r}).predict(np.load('images.npy'))\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [str(env_dir / "bin" / "python"), "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert [g["class"] for g in got] == [w["class"] for w in want]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g["probabilities"], w["probabilities"])
