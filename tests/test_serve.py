"""`python -m mvclip serve`: the HTTP API answered by a real uvicorn server on loopback."""
import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

import mvclip
from mvclip.embedder import Embedder
from mvclip.video_index import VideoIndex

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
ROOT = Path(__file__).resolve().parents[1]
REAL_VIDEOS = ROOT / ".." / "shared" / "data" / "videos"  # ../shared/data/videos from the repo root
pytestmark = pytest.mark.skipif(not REAL_VIDEOS.is_dir(), reason="real clips not found in ../shared/data/videos")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from mvclip.serve import create_app

    videos = tmp_path_factory.mktemp("videos")
    for name in ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4"):
        shutil.copy(REAL_VIDEOS / name, videos / name)
    torch.manual_seed(0)
    model, _ = mvclip.create_model("tiny_cpu", frames=2, input={"resolution": 32})
    embedder = Embedder(model, source="tiny")
    index = VideoIndex.build(embedder, videos, progress=False)
    config = uvicorn.Config(create_app(index, default_k=2), host="127.0.0.1", port=0, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    host, port = srv.servers[0].sockets[0].getsockname()[:2]
    yield f"http://{host}:{port}", index, embedder
    srv.should_exit = True
    thread.join(timeout=10)


def get(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.headers, response.read()


def post(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_server_listens_on_loopback_and_serves_the_page(server):
    base, _, _ = server
    assert base.startswith("http://127.0.0.1:")
    status, headers, body = get(base + "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'id="q"' in body and b"/api/search" in body and b"/api/classify" in body


def test_search_answers_with_the_index_ranking(server):
    base, index, embedder = server
    status, _, body = get(base + "/api/search?q=bicycles%20on%20a%20road&k=3")
    data = json.loads(body)
    expected = index.search("bicycles on a road", 3)
    assert status == 200 and data["query"] == "bicycles on a road"
    assert [r["name"] for r in data["results"]] == [Path(h.path).name for h in expected]
    assert [r["score"] for r in data["results"]] == [round(h.score, 4) for h in expected]
    assert all(r["url"] == f"/video/{r['id']}" for r in data["results"])
    status, _, body = get(base + "/api/search?q=a%20phone%20call")  # the server's default k
    assert len(json.loads(body)["results"]) == 2


def test_videos_are_served_by_number_only(server):
    base, index, _ = server
    status, headers, body = get(base + "/video/0")
    assert status == 200 and body == Path(index.paths[0]).read_bytes() and headers["content-type"] == "video/mp4"
    for bad in ("/video/7", "/video/..%2F..%2Fetc%2Fpasswd", "/api/search"):
        with pytest.raises(urllib.error.HTTPError) as error:
            get(base + bad)
        assert error.value.code in (400, 404)


def test_zero_shot_classification_of_a_chosen_video(server):
    base, index, _ = server
    labels = ["bicycles", "a cartoon rabbit", "a phone call"]
    status, data = post(base + "/api/classify", {"video": 1, "labels": labels})
    expected = index.classify(index.paths[1], labels)
    assert status == 200 and data["video"]["name"] == Path(index.paths[1]).name
    assert [(l["label"], l["probability"]) for l in data["labels"]] == [(l, round(p, 4)) for l, p in expected]
    assert post(base + "/api/classify", {"video": 9, "labels": labels})[0] == 404
    assert post(base + "/api/classify", {"video": 1, "labels": [" "]}) == (400, {"error": "labels: give at least one label"})
