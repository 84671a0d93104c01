from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class ArtifactOut(BaseModel):
    name: str
    kind: str
    size_bytes: int
    sha256: str
    created_at: datetime
    download_url: str


class ArtifactList(BaseModel):
    items: list[ArtifactOut]
