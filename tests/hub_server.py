"""
A tiny stand-in for the Hugging Face Hub: the part of its HTTP API that `huggingface_hub` 2.4 uses for
`push_to_hub` and `from_pretrained("user/repo")`, for tests, on 127.0.0.1. Standard library, and PyYAML (which
`huggingface_hub` requires) to check the metadata of a model card.

Storage, git-like, under one folder: file contents in `blobs/<git blob sha1>`, every commit a full snapshot
`repos/<user>/<name>/commits/<sha>.json` ({parent, title, files: {path: blob sha1}}), whose id is the sha1 of that
JSON, and the branch `refs/main` naming the latest commit. A revision is a branch name or a full commit id, so
older commits stay readable at their id.

No authentication: any token (or none) may read and write. Uploads: the preupload answer makes the client send
every file "regular", inline in the commit (base64 in the ndjson body), as the Hub does for small text files; the
LFS and Xet upload paths are never used, and downloads are plain HTTP (no X-Xet-Hash header).
"""

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
# Hub repos are created with a .gitattributes file in an "initial commit".
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(content: bytes) -> str:
    """Git's object id of a file, which the Hub sends as the ETag of a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class HubError(Exception):
    """An HTTP error; `code` goes into X-Error-Code, which `hf_raise_for_status` maps to its exceptions."""

    def __init__(self, status: int, code: str, message: str, commit: str | None = None):
        super().__init__(message)
        self.status, self.code, self.commit = status, code, commit


class Store:
    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()

    def _repo(self, repo: str, must_exist: bool = True) -> Path:
        path = self.root / "repos" / repo
        if must_exist and not path.is_dir():
            raise HubError(404, "RepoNotFound", f"Repository {repo} not found")
        return path

    def create_repo(self, repo: str) -> bool:
        """False if it exists already."""
        with self.lock:
            path = self._repo(repo, must_exist=False)
            if path.exists():
                return False
            (path / "commits").mkdir(parents=True)
            self._commit(repo, "initial commit", {".gitattributes": self.put_blob(GITATTRIBUTES)})
            return True

    def put_blob(self, content: bytes) -> str:
        oid = git_blob_sha1(content)
        (self.root / "blobs" / oid).write_bytes(content)
        return oid

    def blob(self, oid: str) -> bytes:
        return (self.root / "blobs" / oid).read_bytes()

    def resolve(self, repo: str, revision: str) -> str:
        """A branch name or a full commit id → the commit id."""
        path = self._repo(repo)
        revision = unquote(revision)
        if (path / "refs" / revision).is_file():
            return (path / "refs" / revision).read_text()
        if re.fullmatch(r"[0-9a-f]{40}", revision) and (path / "commits" / f"{revision}.json").is_file():
            return revision
        raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    def commit(self, repo: str, revision: str) -> dict:
        sha = self.resolve(repo, revision)
        return {"sha": sha, **json.loads((self._repo(repo) / "commits" / f"{sha}.json").read_text())}

    def commits(self, repo: str) -> list[str]:
        """Commit ids of `main`, oldest first."""
        shas, sha = [], self.resolve(repo, "main")
        while sha:
            shas.insert(0, sha)
            sha = self.commit(repo, sha)["parent"]
        return shas

    def _commit(self, repo: str, title: str, files: dict, branch: str = "main") -> str:
        path = self._repo(repo)
        ref = path / "refs" / branch
        record = {"parent": ref.read_text() if ref.exists() else None, "title": title, "files": files}
        text = json.dumps(record, sort_keys=True)
        sha = hashlib.sha1(text.encode()).hexdigest()
        (path / "commits" / f"{sha}.json").write_text(text)
        ref.parent.mkdir(exist_ok=True)
        ref.write_text(sha)
        return sha

    def apply_commit(self, repo: str, branch: str, lines: list[dict]) -> str:
        """The ndjson body of POST /api/models/{repo}/commit/{branch}: a header, then one operation a line."""
        with self.lock:
            head = self.commit(repo, branch)
            files = dict(head["files"])
            header = lines[0]["value"]
            if header.get("parentCommit") not in (None, head["sha"]):
                raise HubError(412, "ParentCommitMismatch", "The parent commit is not the head of the branch")
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                if key == "file":
                    files[value["path"]] = self.put_blob(base64.b64decode(value["content"]))
                elif key == "deletedFile":
                    if files.pop(value["path"], None) is None:
                        raise HubError(404, "EntryNotFound", f"A file with this name doesn't exist: {value['path']}")
                elif key == "deletedFolder":
                    files = {p: o for p, o in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
                else:  # "lfsFile" and "copyFile" never come: preupload asks for every file inline
                    raise HubError(400, "BadRequest", f"unsupported commit operation {key!r}")
            return self._commit(repo, header["summary"], files, unquote(branch))


class Handler(BaseHTTPRequestHandler):
    store: Store  # set on the subclass that HubServer makes
    log: list  # every request, "METHOD path", for the tests and for debugging

    ROUTES = [  # (method, path pattern, handler name); the first match wins
        ("POST", r"/api/repos/create", "create_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("POST", rf"/api/models/{REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", rf"/api/models/{REPO}/commit/(?P<rev>[^/]+)", "commit"),
        ("GET", rf"/api/models/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", "tree"),
        ("GET", rf"/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?", "model_info"),
        ("HEAD", rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
        ("GET", rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ]

    def log_message(self, *args):  # quiet
        pass

    def _dispatch(self):
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        self.log.append(f"{self.command} {url.path}")
        body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        for method, pattern, name in self.ROUTES:
            match = re.fullmatch(pattern, url.path)
            if method == self.command and match:
                try:
                    getattr(self, name)(body=body, **{k: v for k, v in match.groupdict().items() if v is not None})
                except HubError as error:
                    headers = {"X-Error-Code": error.code, "X-Error-Message": str(error)}
                    if error.commit:
                        headers["X-Repo-Commit"] = error.commit
                    self._send(error.status, {"error": str(error)}, headers)
                except Exception as error:  # a bug of this server: say so rather than drop the connection
                    self._send(500, {"error": repr(error)})
                return
        self._send(404, {"error": f"not served by the test Hub: {self.command} {url.path}"})

    do_GET = do_HEAD = do_POST = _dispatch

    def _send(self, status: int, payload, headers: dict | None = None):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        if not isinstance(payload, bytes):
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    @property
    def endpoint(self) -> str:
        return f"http://{self.headers['Host']}"

    # ---------------------------------------------------------------------------------------- the API

    def create_repo(self, body):
        request = json.loads(body)
        if request.get("type", "model") != "model":
            raise HubError(400, "BadRequest", "the test Hub serves model repos only")
        repo = f"{request['organization'] or 'user'}/{request['name']}"  # no namespace: the token's user
        url = f"{self.endpoint}/{repo}"
        if self.store.create_repo(repo):
            self._send(200, {"url": url, "name": repo})
        else:  # `create_repo(exist_ok=True)` takes a 409 that still gives the url
            self._send(409, {"error": "You already created this model repo", "url": url})

    def validate_yaml(self, body):
        """The metadata block of a README.md must be a YAML mapping (the Hub checks much more)."""
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---\n", content, flags=re.DOTALL)
        try:
            ok = match is None or isinstance(yaml.safe_load(match.group(1)) or {}, dict)
        except yaml.YAMLError:
            ok = False
        self._send(200 if ok else 400, {} if ok else {"errors": [{"message": "metadata is not a YAML mapping"}]})

    def preupload(self, body, repo, rev):
        """Upload every file inline ("regular"); `oid` is the blob already there, so unchanged files are skipped."""
        files = self.store.commit(repo, rev)["files"]
        self._send(
            200,
            {
                "files": [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": files.get(f["path"])}
                    for f in json.loads(body)["files"]
                ]
            },
        )

    def commit(self, body, repo, rev):
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        sha = self.store.apply_commit(repo, rev, lines)
        self._send(200, {"success": True, "commitOid": sha, "commitUrl": f"{self.endpoint}/{repo}/commit/{sha}"})

    def model_info(self, body, repo, rev="main"):
        commit = self.store.commit(repo, rev)
        self._send(
            200,
            {
                "id": repo,
                "modelId": repo,
                "author": repo.split("/")[0],
                "sha": commit["sha"],
                "private": False,
                "siblings": [{"rfilename": path} for path in sorted(commit["files"])],
            },
        )

    def tree(self, body, repo, rev, path=""):
        """Files (recursive=true) or files and folders one level down (the default) under `path`."""
        commit = self.store.commit(repo, rev)
        prefix = unquote(path).strip("/") + "/" if path else ""
        recursive = self.query.get("recursive", ["false"])[0].lower() == "true"
        entries = {}
        for file, oid in sorted(commit["files"].items()):
            if not file.startswith(prefix):
                continue
            head, _, rest = file[len(prefix) :].partition("/")
            if rest and not recursive:  # a folder one level down
                entries[prefix + head] = {"type": "directory", "path": prefix + head, "oid": "0" * 40}
            else:
                size = len(self.store.blob(oid))
                entries[file] = {"type": "file", "path": file, "size": size, "oid": oid}
        if prefix and not entries:
            raise HubError(404, "EntryNotFound", f"{path} does not exist on {rev}", commit["sha"])
        self._send(200, list(entries.values()))

    def resolve(self, body, repo, rev, path):
        """
        A file at a revision. `hf_hub_download` reads X-Repo-Commit (the commit id that the revision names, under
        which it caches), ETag (the blob id, the cached file's name) and Content-Length from the HEAD, then GETs.
        A missing file is a 404 with X-Error-Code EntryNotFound and the commit, which the client caches as such.
        """
        commit = self.store.commit(repo, rev)
        oid = commit["files"].get(unquote(path))
        if oid is None:
            raise HubError(404, "EntryNotFound", f"{path} does not exist on {rev}", commit["sha"])
        self._send(200, self.store.blob(oid), {"X-Repo-Commit": commit["sha"], "ETag": f'"{oid}"'})


class HubServer:
    """`with HubServer(folder) as hub:` serves the Hub API at `hub.url` (127.0.0.1, a free port)."""

    def __init__(self, root: Path):
        self.store = Store(root)
        self.log = []
        handler = type("BoundHandler", (Handler,), {"store": self.store, "log": self.log})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def files(self, repo: str, revision: str = "main") -> dict[str, bytes]:
        """The files of `repo` at `revision`: {path: content}."""
        return {path: self.store.blob(oid) for path, oid in self.store.commit(repo, revision)["files"].items()}
