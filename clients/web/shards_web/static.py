"""The page's files, read once from the package (no path from a request touches the file system)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
}
#: Served as text/plain: the vendored modules' licences and versions.
_PLAIN = ("LICENSE-", "VERSIONS")


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def _type_of(name: str) -> str | None:
    base = name.rsplit("/", 1)[-1]
    if base.startswith(_PLAIN):
        return TYPES[".txt"]
    dot = base.rfind(".")
    return TYPES.get(base[dot:]) if dot >= 0 else None


def load(package: str = "shards_web") -> dict[str, StaticFile]:
    """Every servable file under the package's ``static/``, by its path there."""
    files: dict[str, StaticFile] = {}
    root = resources.files(package).joinpath("static")

    def walk(directory: resources.abc.Traversable, prefix: str) -> None:
        for entry in directory.iterdir():
            name = prefix + entry.name
            if entry.is_dir():
                walk(entry, name + "/")
                continue
            content_type = _type_of(name)
            if content_type is None:
                continue
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            files[name] = StaticFile(body, content_type, etag)

    walk(root, "")
    return files


def response(request: web.Request, file: StaticFile) -> web.Response:
    headers = {"ETag": file.etag, "Cache-Control": "no-cache"}
    if request.headers.get("If-None-Match") == file.etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=file.body, headers={**headers, "Content-Type": file.content_type})
