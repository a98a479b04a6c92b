"""A small Hugging Face Hub look-alike on 127.0.0.1 for offline tests of push and pull through the real client.

It answers the endpoints that `huggingface_hub.HfApi` (with `endpoint=server.url`), `snapshot_download` and
`hf_hub_download` call for model repos:

    POST /api/repos/create                               create_repo (an initial commit with .gitattributes)
    POST /api/validate-yaml                              create_commit, when README.md is committed
    GET  /api/models/{repo}[/revision/{rev}]             repo_info / model_info: the commit a revision points to
    GET  /api/models/{repo}/tree/{rev}[/{path}]          list_repo_tree / list_repo_files, snapshot_download
    POST /api/models/{repo}/preupload/{rev}              create_commit: every file "regular" (no LFS / Xet)
    POST /api/models/{repo}/commit/{rev}                 create_commit (ndjson); 412 if `parentCommit` is not the
                                                         head, with the Hub's message
    POST /api/models/{repo}/branch/{branch}              create_branch
    POST /api/models/{repo}/tag/{rev}                    create_tag
    GET  /api/models/{repo}/refs                         list_repo_refs
    HEAD, GET /{repo}/resolve/{rev}/{path}               hf_hub_download (X-Repo-Commit, ETag, Content-Length,
                                                          `Range: bytes=N-` answered 206)

Faults on demand: `cut_downloads[path] = n` drops the connection half way through the next `n` downloads of a
file; `corrupt_resumes.add(path)` changes the first byte of every resumed (ranged) download of it.

Blobs are stored on disk under `root/blobs/` by their git blob id, commits and refs as JSON under `root/repos/`.
Commit ids are 40-hex sha1s of the parent, the tree and the message, like git's. Errors carry the `X-Error-Code`
header the client maps to its typed errors (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`).

Example:
    ```py
    >>> with HubServer(tmp_path) as server:
    ...     api = HfApi(endpoint=server.url, token="hf_test")
    ...     api.create_repo("org/name")
    ```
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/(?P<action>[a-z-]+)(?:/(?P<rest>.*))?)?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_COMMIT_ID = re.compile(r"^[0-9a-f]{40}$")
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_id(data: bytes) -> str:
    """The id git gives a file's content (what the Hub reports as `oid` / `ETag` of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


class HubServer:
    """A threaded HTTP server speaking the Hub endpoints listed in the module docstring.

    Args:
        root (`Path`): Folder for the stored blobs, commits and refs.
        tokens (`set[str]`, *optional*): Bearer tokens accepted for writes; default `{"hf_test"}`.

    Attributes:
        url (`str`): The endpoint to pass to `HfApi(endpoint=...)` and the download functions.
        requests (`list[tuple[str, str]]`): Every request as `(method, path)`, in arrival order.
    """

    def __init__(self, root: str | Path, tokens: set[str] | None = None):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "repos").mkdir(parents=True, exist_ok=True)
        self.tokens = tokens if tokens is not None else {"hf_test"}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.RLock()
        self._gate: threading.Barrier | None = None
        self._gate_left = 0
        self.errors: list[str] = []  # unexpected server-side exceptions (answered 500)
        self.cut_downloads: dict[str, int] = {}  # path -> how many more downloads of it to cut half way
        self.corrupt_resumes: set[str] = set()  # paths whose ranged (resumed) downloads bring changed bytes
        self.ranges: list[tuple[str, str]] = []  # (path, Range header) of every ranged download
        self._clock = 0
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="hub-server", daemon=True
        )

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def hold_commits(self, parties: int, timeout: float = 20.0) -> None:
        """The next `parties` commit requests wait for each other before any is applied (one-shot): concurrent
        appends then reach the server having read the same head."""
        with self._lock:
            self._gate, self._gate_left = threading.Barrier(parties, timeout=timeout), parties

    # ---------------------------------------------------------------------------------------------- store
    def _repo_file(self, repo_id: str) -> Path:
        return self.root / "repos" / f"{repo_id.replace('/', '--')}.json"

    def _load(self, repo_id: str) -> dict[str, Any]:
        path = self._repo_file(repo_id)
        if not path.is_file():
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return json.loads(path.read_text())

    def _save(self, repo_id: str, repo: dict[str, Any]) -> None:
        path = self._repo_file(repo_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(repo, indent=1))
        tmp.replace(path)

    def _put_blob(self, data: bytes) -> str:
        blob = git_blob_id(data)
        target = self.root / "blobs" / blob
        if not target.exists():
            target.write_bytes(data)
        return blob

    def blob(self, blob: str) -> bytes:
        return (self.root / "blobs" / blob).read_bytes()

    def _new_commit(self, repo: dict, parent: str | None, tree: dict[str, str], message: str) -> str:
        self._clock += 1
        payload = json.dumps({"parent": parent, "tree": tree, "message": message, "n": self._clock}, sort_keys=True)
        oid = hashlib.sha1(payload.encode()).hexdigest()
        repo["commits"][oid] = {"parent": parent, "tree": tree, "message": message, "date": time.time()}
        return oid

    def _resolve(self, repo_id: str, repo: dict, revision: str) -> str:
        """Branch, tag or commit id -> commit id."""
        revision = unquote(revision)
        if revision in repo["branches"]:
            return repo["branches"][revision]
        if revision in repo["tags"]:
            return repo["tags"][revision]
        if _COMMIT_ID.match(revision) and revision in repo["commits"]:
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def head(self, repo_id: str, branch: str = "main") -> str:
        """The commit `branch` points to."""
        with self._lock:
            return self._load(repo_id)["branches"][branch]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Every file of the repo at `revision`, by path."""
        with self._lock:
            repo = self._load(repo_id)
            tree = repo["commits"][self._resolve(repo_id, repo, revision)]["tree"]
            return {path: self.blob(blob) for path, blob in tree.items()}

    # -------------------------------------------------------------------------------------------- handlers
    def create_repo(self, body: dict, authorized: bool) -> tuple[int, dict]:
        if not authorized:
            raise HubError(401, "Invalid credentials in Authorization header")
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else f"user/{body['name']}"
        if body.get("type", "model") != "model":
            raise HubError(400, "This test server stores model repos only.")
        with self._lock:
            if self._repo_file(repo_id).exists():
                raise HubError(409, "You already created this model repo", url=f"{self.url}/{repo_id}")
            repo: dict[str, Any] = {
                "private": body.get("visibility") == "private" or bool(body.get("private")),
                "branches": {},
                "tags": {},
                "commits": {},
            }
            tree = {".gitattributes": self._put_blob(GITATTRIBUTES)}
            repo["branches"]["main"] = self._new_commit(repo, None, tree, "initial commit")
            self._save(repo_id, repo)
        return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id}

    def info(self, repo_id: str, revision: str | None) -> tuple[int, dict]:
        with self._lock:
            repo = self._load(repo_id)
            oid = self._resolve(repo_id, repo, revision or "main")
            tree = repo["commits"][oid]["tree"]
        return 200, {
            "id": repo_id,
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "sha": oid,
            "private": repo["private"],
            "tags": [],
            "siblings": [{"rfilename": path} for path in sorted(tree)],
            "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        }

    def tree(self, repo_id: str, rest: str, query: str) -> tuple[int, list]:
        revision, _, prefix = rest.partition("/")
        prefix = unquote(prefix).strip("/")
        recursive = "recursive=true" in query.lower() or "recursive=1" in query
        with self._lock:
            repo = self._load(repo_id)
            tree = repo["commits"][self._resolve(repo_id, repo, revision)]["tree"]
            sizes = {path: (self.root / "blobs" / blob).stat().st_size for path, blob in tree.items()}
        under = {p: b for p, b in tree.items() if not prefix or p.startswith(prefix + "/")}
        if prefix and not under:
            raise HubError(404, f"{prefix} does not exist on this revision", "EntryNotFound")
        entries, folders = [], set()
        for path, blob in sorted(under.items()):
            relative = path[len(prefix) + 1 :] if prefix else path
            parts = relative.split("/")
            for depth in range(1, len(parts)):
                folder = "/".join(parts[:depth])
                if (recursive or depth == 1) and folder not in folders:
                    folders.add(folder)
                    full = f"{prefix}/{folder}" if prefix else folder
                    entries.append({"type": "directory", "path": full, "oid": hashlib.sha1(full.encode()).hexdigest()})
            if recursive or len(parts) == 1:
                entries.append({"type": "file", "path": path, "oid": blob, "size": sizes[path]})
        return 200, entries

    def preupload(self, repo_id: str, revision: str, body: dict) -> tuple[int, dict]:
        with self._lock:
            repo = self._load(repo_id)
            tree = repo["commits"][self._resolve(repo_id, repo, revision)]["tree"]
        files = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": tree.get(f["path"])}
            for f in body["files"]
        ]
        return 200, {"files": files, "commitOid": None}

    def commit(self, repo_id: str, revision: str, lines: list[dict], authorized: bool) -> tuple[int, dict]:
        if not authorized:
            raise HubError(401, "Invalid credentials in Authorization header")
        with self._lock:
            gate = self._gate
            if gate is not None:
                self._gate_left -= 1
                if self._gate_left == 0:
                    self._gate = None
        if gate is not None:
            gate.wait()
        header = next(line["value"] for line in lines if line["key"] == "header")
        branch = unquote(revision)
        with self._lock:
            repo = self._load(repo_id)
            if branch not in repo["branches"]:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            head = repo["branches"][branch]
            parent = header.get("parentCommit")
            if parent is not None and parent != head:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            tree = dict(repo["commits"][head]["tree"])
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "file":
                    tree[value["path"]] = self._put_blob(base64.b64decode(value["content"]))
                elif key == "deletedFile":
                    if value["path"] not in tree:
                        raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                    del tree[value["path"]]
                elif key == "deletedFolder":
                    folder = value["path"].rstrip("/") + "/"
                    tree = {p: b for p, b in tree.items() if not p.startswith(folder)}
                elif key == "lfsFile":
                    raise HubError(400, "This test server takes regular files only (preupload answers 'regular').")
            message = header["summary"] + ("\n\n" + header["description"] if header.get("description") else "")
            oid = self._new_commit(repo, head, tree, message)
            repo["branches"][branch] = oid
            self._save(repo_id, repo)
        return 200, {"success": True, "commitOid": oid, "commitUrl": f"{self.url}/{repo_id}/commit/{oid}"}

    def create_ref(self, repo_id: str, kind: str, rest: str, body: dict) -> tuple[int, dict]:
        with self._lock:
            repo = self._load(repo_id)
            if kind == "branch":
                name, start = unquote(rest), body.get("startingPoint") or "main"
                table = repo["branches"]
            else:
                name, start = body["tag"], unquote(rest)
                table = repo["tags"]
            if name in table:
                raise HubError(409, f"Reference {name} already exists")
            table[name] = self._resolve(repo_id, repo, start)
            self._save(repo_id, repo)
        return 200, {}

    def refs(self, repo_id: str) -> tuple[int, dict]:
        with self._lock:
            repo = self._load(repo_id)
        listing = {
            kind: [{"name": n, "ref": f"refs/{prefix}/{n}", "targetCommit": c} for n, c in repo[kind].items()]
            for kind, prefix in (("branches", "heads"), ("tags", "tags"))
        }
        return 200, {**listing, "converts": []}

    def resolve(self, repo_id: str, revision: str, path: str) -> tuple[str, bytes]:
        with self._lock:
            repo = self._load(repo_id)
            oid = self._resolve(repo_id, repo, revision)
            blob = repo["commits"][oid]["tree"].get(unquote(path))
            if blob is None:
                raise HubError(404, "Entry not found", "EntryNotFound")
            return oid, self.blob(blob)


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _reply(
        self, status: int, body: Any = None, headers: dict[str, str] | None = None, *, raw: bytes = b""
    ) -> None:
        data = raw if body is None else json.dumps(body).encode()
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _authorized(self) -> bool:
        value = self.headers.get("Authorization", "")
        return value.startswith("Bearer ") and value[len("Bearer ") :] in self.hub.tokens

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        path, query = split.path, split.query
        self.hub.requests.append((self.command, self.path))
        body = self._body() if self.command == "POST" else b""
        try:
            if self.command == "POST" and path == "/api/repos/create":
                return self._reply(*self.hub.create_repo(json.loads(body), self._authorized()))
            if self.command == "POST" and path == "/api/validate-yaml":
                return self._reply(200, {"errors": [], "warnings": []})
            match = _API.match(path)
            if match:
                repo_id, action, rest = match["repo"], match["action"], match["rest"] or ""
                repo_id = unquote(repo_id)
                if self.command == "GET" and action is None:
                    return self._reply(*self.hub.info(repo_id, None))
                if self.command == "GET" and action == "revision":
                    return self._reply(*self.hub.info(repo_id, unquote(rest)))
                if self.command == "GET" and action == "tree":
                    return self._reply(*self.hub.tree(repo_id, rest, query))
                if self.command == "GET" and action == "refs":
                    return self._reply(*self.hub.refs(repo_id))
                if self.command == "POST" and action == "preupload":
                    return self._reply(*self.hub.preupload(repo_id, rest, json.loads(body)))
                if self.command == "POST" and action == "commit":
                    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                    return self._reply(*self.hub.commit(repo_id, rest, lines, self._authorized()))
                if self.command == "POST" and action in ("branch", "tag"):
                    if not self._authorized():
                        raise HubError(401, "Invalid credentials in Authorization header")
                    return self._reply(*self.hub.create_ref(repo_id, action, rest, json.loads(body or b"{}")))
            match = _RESOLVE.match(path)
            if match and self.command in ("GET", "HEAD"):
                file = unquote(match["path"])
                oid, data = self.hub.resolve(unquote(match["repo"]), match["rev"], file)
                headers = {"X-Repo-Commit": oid, "ETag": f'"{git_blob_id(data)}"', "Accept-Ranges": "bytes"}
                if self.command == "GET":
                    return self._download(file, data, headers)
                return self._reply(200, None, headers, raw=data)
            raise HubError(404, f"The test server does not answer {self.command} {path}")
        except HubError as error:
            headers = {"X-Error-Message": error.message}
            if error.code:
                headers["X-Error-Code"] = error.code
            return self._reply(error.status, {"error": error.message, **error.extra}, headers)
        except Exception as error:  # a bug in this server: answer 500 and keep it for the test to see
            self.hub.errors.append(f"{self.command} {self.path}: {error!r}")
            return self._reply(500, {"error": repr(error)})

    def _download(self, file: str, data: bytes, headers: dict[str, str]) -> None:
        """A file's bytes, honouring `Range: bytes=N-`, with the faults the test asked for."""
        status, size = 200, len(data)
        ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if ranged:
            self.hub.ranges.append((file, self.headers["Range"]))
            start = int(ranged[1])
            status, data = 206, data[start:]
            headers = {**headers, "Content-Range": f"bytes {start}-{size - 1}/{size}"}
            if file in self.hub.corrupt_resumes and data:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
        with self.hub._lock:
            cut = self.hub.cut_downloads.get(file, 0) > 0
            if cut:
                self.hub.cut_downloads[file] -= 1
        if not cut:
            return self._reply(status, None, headers, raw=data)
        self.send_response(status)  # announce every byte, send half, then drop the connection
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    do_GET = do_HEAD = do_POST = _dispatch
