"""The search page: an ASGI app (Starlette) over a `VideoIndex`, served by uvicorn on 127.0.0.1 by default.

Routes: `/` the page (a query box, the top-k clips playable with their scores, zero-shot labels for a chosen clip),
`/api/search?q=...&k=5`, `/api/videos`, `POST /api/classify {"video": id, "labels": [...]}`, and `/video/{id}`, which
serves only the files the index holds (by their number, so no path from a request reaches the file system).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mvclip.extras import require
from mvclip.video_index import VideoIndex

PAGE = Path(__file__).resolve().parent / "static" / "search.html"
MAX_K = 50


def create_app(index: VideoIndex, default_k: int = 6) -> Any:
    """A Starlette app answering queries against `index` (which must have its query model: `VideoIndex.load(..., model=)`)."""
    require("serve", "python -m mvclip serve")
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse
    from starlette.routing import Route

    def video_entry(i: int, score: float | None = None) -> dict[str, Any]:
        entry = {"id": i, "name": Path(index.paths[i]).name, "url": f"/video/{i}" if Path(index.paths[i]).is_file() else None}
        return entry if score is None else {**entry, "score": round(score, 4)}

    position = {path: i for i, path in enumerate(index.paths)}

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8").replace("__DEFAULT_K__", str(default_k)))

    async def search(request: Request) -> JSONResponse:
        query = request.query_params.get("q", "").strip()
        if not query:
            return JSONResponse({"error": "q: give some words to search for"}, status_code=400)
        try:
            k = max(1, min(MAX_K, int(request.query_params.get("k", default_k))))
        except ValueError:
            return JSONResponse({"error": "k: expected a whole number"}, status_code=400)
        hits = index.search(query, k)
        return JSONResponse({"query": query, "results": [video_entry(position[h.path], h.score) for h in hits]})

    async def videos(request: Request) -> JSONResponse:
        return JSONResponse({"videos": [video_entry(i) for i in range(len(index.paths))], "skipped": len(index.skipped)})

    async def classify(request: Request) -> JSONResponse:
        try:
            body = await request.json()
            video, labels = int(body["video"]), [str(label).strip() for label in body["labels"] if str(label).strip()]
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'expected {"video": <id>, "labels": ["...", ...]}'}, status_code=400)
        if not 0 <= video < len(index.paths) or not Path(index.paths[video]).is_file():
            return JSONResponse({"error": f"video: no playable video {video} in the index"}, status_code=404)
        if not labels:
            return JSONResponse({"error": "labels: give at least one label"}, status_code=400)
        ranked = index.classify(index.paths[video], labels, template=str(body.get("template", "a video of {}")))
        return JSONResponse({"video": video_entry(video), "labels": [{"label": l, "probability": round(p, 4)} for l, p in ranked]})

    async def video_file(request: Request) -> Any:
        i = int(request.path_params["id"])
        if not 0 <= i < len(index.paths) or not Path(index.paths[i]).is_file():
            return JSONResponse({"error": f"no video {i}"}, status_code=404)
        return FileResponse(index.paths[i])

    return Starlette(routes=[
        Route("/", page), Route("/api/search", search), Route("/api/videos", videos),
        Route("/api/classify", classify, methods=["POST"]), Route("/video/{id:int}", video_file),
    ])
