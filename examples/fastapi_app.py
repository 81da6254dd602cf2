"""A FastAPI service that generates an image and answers with its URL.

Try it against the fake provider, with no key and no network::

    python -m banana_async.testing --port 8500 &
    BANANA_BASE_URL=http://127.0.0.1:8500 BANANA_API_KEY=sk-fake-123 python examples/fastapi_app.py
    curl -X POST localhost:8000/images -H 'content-type: application/json' \\
         -d '{"prompt": "a cat on a windowsill"}'

Against the real service, set ``BANANA_API_KEY`` only (and ``BANANA_DIALECT=navo``
for that reseller). ``uvicorn fastapi_app:app --app-dir examples`` serves it too.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException
from pydantic import BaseModel

import banana_async as ba
from banana_async.fastapi import BananaClientDep, lifespan

router = APIRouter()


class ImageRequest(BaseModel):
    prompt: str
    size: str | None = None


class ImageResult(BaseModel):
    id: str
    status: str
    image_url: str | None = None
    error: str | None = None


def as_result(task: ba.Task) -> ImageResult:
    return ImageResult(id=task.id, status=task.status, image_url=task.image_url, error=task.error)


@router.post("/images")
async def generate_image(body: ImageRequest, client: BananaClientDep) -> ImageResult:
    """Generate an image and answer once it is ready."""
    try:
        task = await client.generate(body.prompt, size=body.size, timeout=120)
    except ba.InvalidRequestError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    except ba.TaskFailedError as exc:
        return as_result(exc.task)
    except ba.TaskTimeoutError as exc:
        detail = f"task {exc.task_id} is still running; ask GET /images/{exc.task_id}"
        raise HTTPException(status_code=504, detail=detail) from exc
    except ba.BananaError as exc:
        raise HTTPException(status_code=502, detail=str(exc)) from exc
    return as_result(task)


@router.get("/images/{task_id}")
async def image_status(task_id: str, client: BananaClientDep) -> ImageResult:
    """One status query: for a caller whose ``POST /images`` timed out."""
    try:
        return as_result(await client.get(task_id))
    except ba.NotFoundError as exc:
        raise HTTPException(status_code=404, detail="no such task") from exc
    except ba.BananaError as exc:
        raise HTTPException(status_code=502, detail=str(exc)) from exc


def make_app(**client_options: Any) -> FastAPI:
    """The application; ``client_options`` go to the BananaClient (tests pass their own)."""
    options: dict[str, Any] = {
        "dialect": os.environ.get("BANANA_DIALECT", "nano"),
        # None (unset) means the dialect's own API hosts.
        "base_url": os.environ.get("BANANA_BASE_URL"),
        **client_options,
    }
    app = FastAPI(lifespan=lifespan(**options))
    app.include_router(router)
    return app


app = make_app()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, port=int(os.environ.get("PORT", "8000")))
