"""Datasets: JSONL uploads validated line by line, stored under a server-chosen name."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile

from api.auth import CurrentPrincipal
from api.db.models import Dataset
from api.deps import SessionDep, SettingsDep
from api.errors import ProblemError, field_error, problem_responses, validation_problem
from api.pagination import after_cursor, encode_cursor, is_id
from api.schemas.datasets import DatasetList, DatasetOut
from api.services import datasets as svc

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def _too_large(limit: int) -> ProblemError:
    return ProblemError(
        413, f"the dataset exceeds the upload limit of {limit} bytes", slug="payload-too-large"
    )


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    summary="Upload a JSONL dataset",
    responses=problem_responses(400, 401, 413, 422),
)
def upload_dataset(
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    file: Annotated[UploadFile, File(description="JSON Lines: one record per line.")],
    name: Annotated[
        str | None, Form(max_length=200, description="A label; defaults to the file name.")
    ] = None,
) -> DatasetOut:
    """Each line must be a JSON object with a prompt and a response in one of the layouts the engine reads:
    prompt/response, prompt/output, prompt/completion, instruction(+context or input)/response or output,
    question/answer, or a chat `messages` list ending with an assistant turn."""
    assert settings.datasets_dir is not None
    label = _label(name or (file.filename or "").replace("\\", "/").rsplit("/", 1)[-1]) or "dataset.jsonl"
    try:
        dataset = svc.store_upload(
            session,
            owner=principal.owner,
            name=label,
            source=file.file,
            datasets_dir=settings.datasets_dir,
            max_bytes=settings.max_upload_bytes,
        )
    except svc.UploadTooLarge as e:
        raise _too_large(e.limit) from None
    except svc.InvalidDataset as e:
        loc = ["body", "file", f"line {e.line}"] if e.line else ["body", "file"]
        raise validation_problem(f"invalid dataset: {e}", [field_error("file", str(e), loc)]) from None
    response.headers["Location"] = f"/v1/datasets/{dataset.id}"
    return DatasetOut.model_validate(dataset)


def _label(name: str) -> str:
    # A label is shown, never used as a path; control characters (NUL among them) are dropped.
    return "".join(c for c in name if c.isprintable())[:200].strip()


@router.get(
    "",
    response_model=DatasetList,
    summary="List your datasets, newest first",
    responses=problem_responses(401, 422),
)
def list_datasets(
    principal: CurrentPrincipal,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=200, description="next_cursor of the previous page.")
    ] = None,
) -> DatasetList:
    after = after_cursor(Dataset, cursor) if cursor else None
    rows = svc.list_owned(session, principal.owner, limit=limit + 1, after=after)
    page, more = rows[:limit], len(rows) > limit
    last = page[-1] if more else None
    return DatasetList(
        items=[DatasetOut.model_validate(d) for d in page],
        next_cursor=encode_cursor(last.created_at, last.id) if last is not None else None,
    )


def _owned(session: SessionDep, owner: str, dataset_id: str) -> Dataset:
    dataset = svc.get_owned(session, owner, dataset_id) if is_id(dataset_id) else None
    if dataset is None:
        raise ProblemError(404, f"no dataset '{dataset_id[:64]}'", slug="not-found")
    return dataset


@router.get(
    "/{dataset_id}", response_model=DatasetOut, summary="One dataset", responses=problem_responses(401, 404)
)
def get_dataset(dataset_id: str, principal: CurrentPrincipal, session: SessionDep) -> DatasetOut:
    return DatasetOut.model_validate(_owned(session, principal.owner, dataset_id))


@router.delete(
    "/{dataset_id}",
    status_code=204,
    summary="Delete an unused dataset",
    responses=problem_responses(401, 404, 409),
)
def delete_dataset(
    dataset_id: str, principal: CurrentPrincipal, session: SessionDep, settings: SettingsDep
) -> Response:
    dataset = _owned(session, principal.owner, dataset_id)
    assert settings.datasets_dir is not None
    try:
        svc.delete_dataset(session, dataset, settings.datasets_dir)
    except svc.DatasetGone:
        raise ProblemError(404, f"no dataset '{dataset_id}'", slug="not-found") from None
    except svc.DatasetInUse as e:
        raise ProblemError(
            409, f"dataset '{dataset_id}' is used by unfinished job '{e.args[0]}'", slug="dataset-in-use"
        ) from None
    return Response(status_code=204)
