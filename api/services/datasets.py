"""Uploaded JSONL datasets: streamed to disk under a server-chosen name, validated line by line."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement

from api.db.base import utcnow
from api.db.models import TERMINAL_STATUSES, Dataset, Job, new_id
from api.pagination import is_id
from dskd_core.data.records import DataError, FieldNames, parse_record

_WHERE = "record"  # parse_record prefixes its messages with where the record is; the caller adds the line
BOM = b"\xef\xbb\xbf"


class UploadTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the upload exceeds the limit of {limit} bytes")
        self.limit = limit


class InvalidDataset(Exception):
    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line
        self.message = message


class DatasetInUse(Exception):
    pass


class DatasetGone(LookupError):
    pass


def record_problem(record: Any) -> str | None:
    """Why the engine would refuse this record, or None: the engine's own rule (`parse_record` with the
    auto-detected layouts), so an upload holds nothing that a job would later fail on as bad_data."""
    try:
        parse_record(record, FieldNames(), _WHERE)
    except DataError as e:
        return str(e).removeprefix(f"{_WHERE}: ")
    return None


def validate_jsonl(path: Path) -> int:
    """Row count of a valid JSONL file; raises InvalidDataset naming the first bad line (1-based)."""
    rows = 0
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise InvalidDataset(number, f"not UTF-8 ({e.reason})") from None
            if not text:
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise InvalidDataset(number, f"invalid JSON: {e.msg} at column {e.colno}") from None
            except RecursionError:
                raise InvalidDataset(number, "the JSON is nested too deeply") from None
            problem = record_problem(record)
            if problem:
                raise InvalidDataset(number, problem)
            rows += 1
    if rows == 0:
        raise InvalidDataset(None, "the file holds no records")
    return rows


def _blocks(source: BinaryIO, size: int = 1 << 20) -> Iterator[bytes]:
    """The upload in blocks, without a leading UTF-8 byte-order mark (editors on Windows add one; the engine
    reads the stored file as plain UTF-8)."""
    first = True
    while block := source.read(size):
        if first:
            block = block.removeprefix(BOM)
            first = False
        yield block


def store_upload(
    session: Session, *, owner: str, name: str, source: BinaryIO, datasets_dir: Path, max_bytes: int
) -> Dataset:
    """Copy the upload to datasets_dir/<id>.jsonl (size-capped, hashed), validate, record it, commit."""
    datasets_dir.mkdir(parents=True, exist_ok=True)
    dataset_id = new_id()
    final = datasets_dir / f"{dataset_id}.jsonl"
    partial = datasets_dir / f".{dataset_id}.partial"
    digest = hashlib.sha256()
    size = 0
    try:
        with partial.open("wb") as out:
            for block in _blocks(source):
                size += len(block)
                if size > max_bytes:
                    raise UploadTooLarge(max_bytes)
                digest.update(block)
                out.write(block)
        rows = validate_jsonl(partial)
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    dataset = Dataset(
        id=dataset_id,
        owner=owner,
        name=name,
        stored_path=final.name,
        size_bytes=size,
        sha256=digest.hexdigest(),
        row_count=rows,
        created_at=utcnow(),
    )
    session.add(dataset)
    try:
        session.commit()
    except BaseException:
        final.unlink(missing_ok=True)
        raise
    return dataset


def get_owned(session: Session, owner: str, dataset_id: str) -> Dataset | None:
    dataset = session.get(Dataset, dataset_id) if is_id(dataset_id) else None
    return dataset if dataset is not None and dataset.owner == owner else None


def list_owned(
    session: Session, owner: str, *, limit: int | None = None, after: ColumnElement[bool] | None = None
) -> list[Dataset]:
    """The owner's datasets, newest first (keyset-paginated by the caller's `after` clause)."""
    query = select(Dataset).where(Dataset.owner == owner)
    if after is not None:
        query = query.where(after)
    query = query.order_by(Dataset.created_at.desc(), Dataset.id.desc())
    return list(session.scalars(query.limit(limit) if limit is not None else query))


def dataset_file(dataset: Dataset, datasets_dir: Path) -> Path:
    """Where the worker reads the dataset (data.path for the engine)."""
    return datasets_dir / dataset.stored_path


def delete_dataset(session: Session, dataset: Dataset, datasets_dir: Path) -> None:
    """Delete the row and file; DatasetInUse while a non-terminal job uses it (as its training or dev set).
    Finished jobs keep their spec; their reference to the dataset is cleared.

    The dataset row is locked first (PostgreSQL), so a concurrent submission either commits its job before
    (and this sees it: 409) or waits and then finds the dataset gone (its foreign key refuses the insert).
    """
    dataset_id = dataset.id  # a rollback below expires the instance
    locked = select(Dataset.id).where(Dataset.id == dataset_id)
    if session.get_bind().dialect.name == "postgresql":
        locked = locked.with_for_update()
    if session.scalar(locked) is None:  # deleted meanwhile by a concurrent request
        session.rollback()
        raise DatasetGone(dataset_id)
    uses = (Job.dataset_id == dataset_id) | (Job.dev_dataset_id == dataset_id)
    active = session.scalar(select(Job.id).where(uses, Job.status.not_in(TERMINAL_STATUSES)).limit(1))
    if active is not None:
        session.rollback()
        raise DatasetInUse(active)
    for column in (Job.dataset_id, Job.dev_dataset_id):
        session.execute(
            update(Job)
            .where(column == dataset_id, Job.status.in_(TERMINAL_STATUSES))
            .values({column: None})
            .execution_options(synchronize_session=False)
        )
    path = dataset_file(dataset, datasets_dir)
    session.delete(dataset)
    session.commit()
    path.unlink(missing_ok=True)
