"""File transfers: upload progress, and artifact downloads that resume by Range and check the sha256."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

import httpx

from dskd_client.errors import ApiError, ChecksumMismatch, NotFound
from dskd_client.models import Artifact

if TYPE_CHECKING:
    from dskd_client.client import Client

ProgressCallback = Callable[[int, int], None]  # (bytes done, bytes in all)
CHUNK_BYTES = 1 << 20


class ProgressReader:
    """A binary file that reports how much of it has been read (httpx streams multipart files with read())."""

    def __init__(self, file: IO[bytes], total: int, callback: ProgressCallback | None) -> None:
        self._file = file
        self._total = total
        self._callback = callback

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        if self._callback is not None:
            self._callback(self._file.tell(), self._total)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


class Artifacts:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self, job_id: str) -> list[Artifact]:
        items = self._client.get_json(f"/v1/jobs/{job_id}/artifacts")["items"]
        return [Artifact.model_validate(a) for a in items]

    def get(self, job_id: str, name: str) -> Artifact:
        for artifact in self.list(job_id):
            if artifact.name == name:
                return artifact
        raise NotFound(404, "Not Found", f"no artifact '{name}' for job '{job_id}'")

    def download(
        self,
        job_id: str,
        name: str = "student.tar",
        dest: str | Path = ".",
        *,
        progress: ProgressCallback | None = None,
        resume: bool = True,
        verify: bool = True,
    ) -> Path:
        """Download an artifact to `dest` (a directory or a file path) and return the file's path.

        The bytes go to `<file>.part` first; with `resume`, an existing `.part` is continued with a Range request
        (If-Range on the artifact's sha256, so a changed file restarts from zero). With `verify`, the finished
        file's sha256 must match the listing, else the partial file is removed and ChecksumMismatch raised.
        """
        artifact = self.get(job_id, name)
        target = Path(dest)
        if target.is_dir():
            target = target / Path(name).name
        part = target.with_name(target.name + ".part")
        offset = part.stat().st_size if resume and part.exists() else 0
        if offset > artifact.size_bytes:
            offset = 0
        if offset < artifact.size_bytes or artifact.size_bytes == 0:
            self._fetch(artifact, part, offset, progress)
        elif progress is not None:
            progress(offset, artifact.size_bytes)
        if verify:
            actual = sha256_of(part)
            if actual != artifact.sha256:
                part.unlink()
                raise ChecksumMismatch(f"{name}: sha256 {actual} does not match the listed {artifact.sha256}")
        part.replace(target)
        return target

    def _fetch(self, artifact: Artifact, part: Path, offset: int, progress: ProgressCallback | None) -> None:
        headers = {"Range": f"bytes={offset}-", "If-Range": f'"{artifact.sha256}"'} if offset else {}
        timeout = httpx.Timeout(self._client.http.timeout.connect, read=60.0)
        with self._client.http.stream("GET", artifact.download_url, headers=headers, timeout=timeout) as r:
            if r.status_code >= 400:
                r.read()
                raise ApiError.from_response(r)
            if r.status_code != 206:
                offset = 0  # the server sent the whole file (no Range support, or the file changed)
            part.parent.mkdir(parents=True, exist_ok=True)
            with part.open("ab" if offset else "wb") as f:
                done = offset
                for chunk in r.iter_bytes(CHUNK_BYTES):
                    f.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, artifact.size_bytes)
