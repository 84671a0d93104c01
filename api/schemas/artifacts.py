from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class ArtifactOut(BaseModel):
    name: str
    kind: str
    size_bytes: int
    sha256: str
    created_at: datetime
    download_url: str = Field(description="Needs the Authorization header; supports Range.")
    link_url: str = Field(
        description="Signed link: a plain GET without a header (browsers, curl), until it expires."
    )
    link_expires_at: datetime


class ArtifactList(BaseModel):
    items: list[ArtifactOut]
