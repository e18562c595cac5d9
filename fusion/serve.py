"""agefuse-serve: the fused model behind a local HTTP service, and a page to try it.

    agefuse-serve [--model runs/fused/fused.pt] [--host 127.0.0.1] [--port 8000]

``POST /predict`` with an image (a multipart form's ``file``, or the raw bytes as the body)
answers ``{"faces": [...]}``, the records of agefuse-predict's JSON. ``GET /`` is one page
where a person drops a photo and sees each face's box, age, interval and gender drawn on it.
``GET /health`` says the model is loaded. It listens on 127.0.0.1 unless told otherwise,
refuses an upload over ``--max-bytes`` (413) and an image over ``--max-pixels`` or one that
is not an image (415 or 400, with the reason in one line), drops an upload that does not
arrive within ``--upload-timeout`` (408, the connection closed) and logs a client that
disconnects mid-upload in one line, loads the model once at start,
and estimates one request at a time while others upload and decode, so concurrent requests
never share a model call.
"""

import argparse
import asyncio
import sys
import threading
from pathlib import Path

from agefuse.cli import HelpFormatter, existing_file, float_in, int_at_least, run_command
from agefuse.regions import DETECTORS, FRAMING_HELP, FRAMINGS

PAGE = Path(__file__).parent / "serve.html"
UPLOAD_TIMEOUT = 30.0  # seconds: a 20 MB photo over a slow phone link, not a connection held open for ever


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Serve the fused model over HTTP, with a page to try it.",
                                     add_help=add_help, formatter_class=HelpFormatter)
    parser.add_argument("--model", default=None, type=existing_file,
                        help="fused.pt (default: the UTKFace model installed with agefuse)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; 0.0.0.0 opens it to the network (no authentication)")
    parser.add_argument("--port", type=int_at_least(1, 65535), default=8000, help="TCP port to listen on")
    parser.add_argument("--max-bytes", type=int_at_least(1), default=20 * 2**20, help="largest upload, in bytes")
    parser.add_argument("--max-pixels", type=int_at_least(1), default=40_000_000, help="largest image, width x height")
    parser.add_argument("--threads", type=int_at_least(1), default=2, help="CPU cores for one estimate")
    parser.add_argument("--upload-timeout", type=float_in(0, 3600, low_open=True), default=UPLOAD_TIMEOUT,
                        help="seconds an upload may take to arrive; a stalled one is answered 408 and its "
                             "connection closed")
    parser.add_argument("--detector", default=None, choices=DETECTORS,
                        help="face detector (default: the one the model's training cache used)")
    parser.add_argument("--framing", default=None, choices=FRAMINGS, help=FRAMING_HELP)
    return parser


def create_app(model_path: "str | None" = None, max_bytes: int = 20 * 2**20, max_pixels: int = 40_000_000,
               threads: int = 2, detector: "str | None" = None,
               upload_timeout: float = UPLOAD_TIMEOUT, framing: "str | None" = None):
    """The FastAPI application, with the model loaded (once, here)."""
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.requests import ClientDisconnect

    from agefuse.regions import TooLarge, decode

    from .inference import branch_pool, crop_settings, predict_faces
    from .model import load_fused

    model, _ = load_fused(model_path)
    model.trace()
    pool, settings = branch_pool(model, threads), crop_settings(model, detector, framing=framing)
    busy = threading.Lock()  # one estimate at a time: the branches already use every core given
    app = FastAPI(title="agefuse", description="Age and gender of every face in a photo.")

    def refuse(status: int, reason: str, close: bool = False) -> JSONResponse:
        return JSONResponse({"error": reason}, status_code=status, headers={"connection": "close"} if close else None)

    def log(request: Request, what: str) -> None:  # one line a dropped client: it is theirs, not the service's
        client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
        print(f"agefuse-serve: {client} {what}", file=sys.stderr, flush=True)

    async def upload(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes + 4096:
            raise TooLarge(f"upload of {int(declared)} bytes is over the limit of {max_bytes}")
        body = bytearray()
        async for chunk in request.stream():  # counted as it comes: a missing or false length is no way round
            body += chunk
            if len(body) > max_bytes + 4096:
                raise TooLarge(f"upload is over the limit of {max_bytes} bytes")
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            request._body = bytes(body)  # Starlette's form() reads a body already received from here
            form = await request.form()
            file = form.get("file")
            if file is None or isinstance(file, str):
                raise ValueError("the form has no 'file' field with an image")
            body = bytearray(await file.read())
        if len(body) > max_bytes:
            raise TooLarge(f"image of {len(body)} bytes is over the limit of {max_bytes}")
        return bytes(body)

    def estimate(data: bytes) -> list[dict]:
        image = decode(data, max_pixels)
        with busy:
            return predict_faces(model, image, settings, pool, threads)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    @app.get("/health")
    def health() -> dict:
        return {"model": str(model_path or "installed"), "regions": model.regions, "interval": model.interval}

    @app.post("/predict")
    async def predict(request: Request):
        try:
            data = await asyncio.wait_for(upload(request), upload_timeout)
            if not data:
                return refuse(400, "empty upload: send an image file")
            faces = await run_in_threadpool(estimate, data)
        except ClientDisconnect:
            log(request, "disconnected mid-upload; dropped")
            return Response(status_code=400)  # nobody left to read it
        except asyncio.TimeoutError:
            log(request, f"sent no whole upload within {upload_timeout:g} s (--upload-timeout); dropped")
            return refuse(408, f"the upload did not arrive within {upload_timeout:g} s", close=True)
        except TooLarge as err:
            return refuse(413, str(err))
        except ValueError as err:  # decode's reasons: too small, truncated, not an image
            reason = str(err)
            return refuse(415 if "decodable" in reason or "not a" in reason else 400, reason)
        return {"faces": faces, "message": None if faces else "no face found"}

    return app


def main(args: argparse.Namespace) -> int:
    import uvicorn
    app = create_app(args.model, args.max_bytes, args.max_pixels, args.threads, args.detector,
                     upload_timeout=args.upload_timeout, framing=args.framing)
    print(f"agefuse-serve: http://{args.host}:{args.port}/ (POST /predict with an image; Ctrl-C stops)",
          file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def run() -> int:
    return run_command(get_args_parser, main)


if __name__ == "__main__":
    sys.exit(run())
