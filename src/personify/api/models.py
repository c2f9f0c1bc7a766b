"""Model routes (Bearer API key): the churn and lifetime-value model versions the registry
holds (``personify.predict.registry``), which one each target serves, promotion by hand and
rollback.

Reads need the ``read`` role, writes the ``admin`` role. A version is addressed by its id,
``/v1/models/{id}``; a target's promotions and its rollback by the target's name under
``/v1/models/targets/{target}``. Litestar matches the literal ``targets`` before the integer
parameter, and the two never look alike in the OpenAPI document.

A target other than ``churn`` or ``clv``, and a model file that no longer matches the
checksum the registry recorded (``model_checksum_mismatch``) or is not a model file
(``invalid_model_file``), are 422s: the request is well formed, what it names cannot be used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import msgspec
from litestar import Router, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import PathParameter, QueryParameter

from personify.api.admin import MAX_NAME_CHARS, NO_NUL, unprocessable_in_thread
from personify.api.documents import admin_responses, error_response
from personify.api.guards import BEARER_SECURITY, authorize, needs
from personify.predict import targets
from personify.predict.monitor import ModelMonitor
from personify.predict.registry import ModelRegistry, ModelVersion

__all__ = [
    "ModelVersionDetail",
    "ModelVersionList",
    "ModelVersionSummary",
    "MonitoringChecks",
    "Promotion",
    "PromotionList",
    "model_router",
]

# the scope each route needs (``personify.auth.roles``; per_user: an audited read)
READ = needs("models:read")
WRITE = needs("models:write")
# the registry's and the targets' codes for a request that names something unusable: 422,
# as a definition that breaks its rules is (the registry raises them as plain validation
# errors, which would be 400s)
_UNPROCESSABLE_CODES = frozenset(
    {"invalid_target", "model_checksum_mismatch", "invalid_model_file"}
)
# model ids are a database integer
_MAX_ID = 2**31 - 1

T = TypeVar("T")

ModelId = Annotated[
    int, PathParameter(ge=1, le=_MAX_ID, description="a model version's id (its `id`)")
]
TargetName = Annotated[
    str,
    PathParameter(
        min_length=1, max_length=MAX_NAME_CHARS, pattern=NO_NUL, description="churn or clv"
    ),
]


class ModelVersionSummary(msgspec.Struct):
    """A registered version of a target's model: what it predicts, whether it is served, and
    how it validated against the baseline (``docs/predict.md``)."""

    id: Annotated[int, msgspec.Meta(description="the version's id across every target")]
    target: Annotated[str, msgspec.Meta(description="churn or clv")]
    targetKey: Annotated[
        str, msgspec.Meta(description="target, horizon and event: churn:30d:*, clv:90d:Order …")
    ]
    horizonDays: Annotated[float, msgspec.Meta(description="the days ahead it predicts")]
    event: Annotated[
        str | None, msgspec.Meta(description="the event it reads (null: any event, for churn)")
    ]
    version: Annotated[int, msgspec.Meta(description="the version's number within its target")]
    status: Annotated[
        str, msgspec.Meta(description="kept (the gate held it back) or promoted (served once)")
    ]
    served: Annotated[bool, msgspec.Meta(description="whether its target serves it now")]
    asOf: Annotated[str, msgspec.Meta(description="the training cut-off (ISO-8601 UTC)")]
    createdAt: Annotated[str, msgspec.Meta(description="when it was registered (ISO-8601 UTC)")]
    kind: Annotated[str | None, msgspec.Meta(description="churn, two_part or tweedie")]
    validation: Annotated[
        str | None,
        msgspec.Meta(description="how it was validated: next_window or held_out_users"),
    ]
    metric: Annotated[
        str | None, msgspec.Meta(description="the gate's metric: roc_auc (churn), revenue_mae")
    ]
    value: Annotated[float | None, msgspec.Meta(description="its validation value of metric")]
    baselineValue: Annotated[
        float | None, msgspec.Meta(description="the BG/NBD baseline's value on the same users")
    ]
    gate: Annotated[
        str | None, msgspec.Meta(description="the promotion gate's decision: promoted or kept")
    ]
    sha256: Annotated[str, msgspec.Meta(description="the SHA-256 of its model file")]
    lineageId: Annotated[
        str | None, msgspec.Meta(description="the lineage record of what it was trained on")
    ]


class ModelVersionDetail(ModelVersionSummary):
    """A model version with its file, the features it reads, their definitions, and its whole
    training report."""

    file: Annotated[str, msgspec.Meta(description="the path of its model file on the server")]
    features: Annotated[
        dict[str, Any],
        msgspec.Meta(description="numeric feature names, and categories with their values"),
    ]
    definitions: Annotated[
        str, msgspec.Meta(description="the digest of the feature definitions it was trained on")
    ]
    report: Annotated[
        dict[str, Any],
        msgspec.Meta(description="the training report: metrics, baseline, gate, validation"),
    ]


class ModelVersionList(msgspec.Struct):
    """Model versions, newest first."""

    models: list[ModelVersionSummary]


class Promotion(msgspec.Struct):
    """A promotion: from then on, its target served that version."""

    modelId: Annotated[int, msgspec.Meta(description="the id of the version promoted")]
    targetKey: Annotated[str, msgspec.Meta(description="the version's target key")]
    reason: Annotated[str, msgspec.Meta(description="gate (after training), manual, or rollback")]
    promotedAt: Annotated[str, msgspec.Meta(description="when (ISO-8601 UTC)")]


class PromotionList(msgspec.Struct):
    """A target's promotions, newest first: the first names the version served now."""

    promotions: list[Promotion]


async def _checked(call: Callable[..., T], *args: Any) -> T:
    """``call`` in a thread; a target or a model file that cannot be used becomes a 422 with
    the same code and details."""
    return await unprocessable_in_thread(_UNPROCESSABLE_CODES, call, *args)


def _known(target_name: str) -> str:
    """The target's name, once ``personify.predict.targets`` knows it (``invalid_target``)."""
    return targets.target(target_name).name


def _summary(version: ModelVersion) -> ModelVersionSummary:
    return msgspec.convert(version.to_dict(), ModelVersionSummary)


def _detail(version: ModelVersion) -> ModelVersionDetail:
    return msgspec.convert(version.to_dict(full=True), ModelVersionDetail)


def _versions(models: ModelRegistry, target_name: str | None) -> list[ModelVersion]:
    return models.versions(None if target_name is None else _known(target_name))


def _rollback(models: ModelRegistry, target_name: str) -> ModelVersion:
    return models.rollback(_known(target_name))


def _promotions(models: ModelRegistry, target_name: str) -> list[dict[str, Any]]:
    return models.promotions(_known(target_name))


_INVALID_TARGET = error_response("invalid_target: the target is not churn or clv")
_MODEL_NOT_FOUND = "model_not_found: no version has that id"
_UNUSABLE_FILE = error_response(
    "model_checksum_mismatch: the model file was changed or replaced since it was registered, "
    "or invalid_model_file: it is not a model file"
)


def _file_errors(not_found: str) -> dict[int, ResponseSpec]:
    return {
        404: error_response(f"{not_found}, or model_file_missing: its model file is gone"),
        422: _UNUSABLE_FILE,
    }


@get("/v1/models", opt=READ, responses={**admin_responses(), 422: _INVALID_TARGET})
async def list_models(
    models: NamedDependency[ModelRegistry],
    target: Annotated[
        str | None,
        QueryParameter(
            min_length=1,
            max_length=MAX_NAME_CHARS,
            pattern=NO_NUL,
            description="only this target's versions: churn or clv",
        ),
    ] = None,
) -> ModelVersionList:
    """Every registered model version (of one target), newest first, each marked when its
    target serves it."""
    found = await _checked(_versions, models, target)
    return ModelVersionList(models=[_summary(version) for version in found])


@get(
    "/v1/models/{model_id:int}",
    opt=READ,
    responses={**admin_responses(), 404: error_response(_MODEL_NOT_FOUND)},
)
async def show_model(
    models: NamedDependency[ModelRegistry], model_id: ModelId
) -> ModelVersionDetail:
    """One model version with its features, definitions and whole training report."""
    return _detail(await _checked(models.get, model_id))


@post(
    "/v1/models/{model_id:int}/promote",
    opt=WRITE,
    # the version promoted is the answer, not a new resource: 200, not Litestar's 201
    status_code=200,
    responses={**admin_responses(), **_file_errors(_MODEL_NOT_FOUND)},
)
async def promote_model(
    models: NamedDependency[ModelRegistry], model_id: ModelId
) -> ModelVersionDetail:
    """Serve this version for its target from now on (promotion reason ``manual``); its model
    file is read and its checksum checked first, so a tampered or missing file is refused."""
    return _detail(await _checked(lambda: models.promote(model_id, reason="manual")))


@post(
    "/v1/models/targets/{target:str}/rollback",
    opt=WRITE,
    status_code=200,
    responses={
        **admin_responses(),
        **_file_errors("no_served_model: the target serves no version"),
        409: error_response(
            "nothing_to_roll_back: no other version was served before the current one"
        ),
        422: error_response(
            "invalid_target: the target is not churn or clv; model_checksum_mismatch or "
            "invalid_model_file: the earlier version's model file cannot be used"
        ),
    },
)
async def roll_back_model(
    models: NamedDependency[ModelRegistry], target: TargetName
) -> ModelVersionDetail:
    """Serve again the version the target served before the current one (a new promotion,
    reason ``rollback``); answers the version served now."""
    return _detail(await _checked(_rollback, models, target))


@get(
    "/v1/models/targets/{target:str}/promotions",
    opt=READ,
    responses={**admin_responses(), 422: _INVALID_TARGET},
)
async def list_promotions(
    models: NamedDependency[ModelRegistry], target: TargetName
) -> PromotionList:
    """A target's promotions, newest first (empty when it never served a version)."""
    found = await _checked(_promotions, models, target)
    return PromotionList(promotions=[msgspec.convert(p, Promotion) for p in found])


class MonitoringChecks(msgspec.Struct):
    """A target's monitoring checks, newest first: each with the served version it checked,
    its users, the PSI of every feature (``featureDrift``) and of the scores with their
    summary (``scoreDrift``), the realised performance of cohorts whose horizon passed
    (``realised``), and its ``alerts`` (``feature_drift``, ``score_drift``,
    ``realised_auc``, ``realised_mae``, ``model_unavailable``)."""

    checks: list[dict[str, Any]]


def _checks(monitor: ModelMonitor, target_name: str, limit: int) -> list[dict[str, Any]]:
    return monitor.history(_known(target_name), limit=limit)


@get(
    "/v1/models/targets/{target:str}/monitoring",
    opt=READ,
    responses={**admin_responses(), 422: _INVALID_TARGET},
)
async def list_checks(
    model_monitor: NamedDependency[ModelMonitor],
    target: TargetName,
    limit: Annotated[int, QueryParameter(ge=1, le=365, description="how many checks")] = 30,
) -> MonitoringChecks:
    """A target's monitoring checks, newest first (``personify serve`` makes one a day;
    ``personify predict monitor`` one now): drift of features and scores, realised
    performance and alerts."""
    return MonitoringChecks(checks=await _checked(_checks, model_monitor, target, limit))


def model_router() -> Router:
    """The model routes, behind the API key guard (writes need the admin role)."""
    return Router(
        "/",
        route_handlers=[
            list_models,
            show_model,
            promote_model,
            roll_back_model,
            list_promotions,
            list_checks,
        ],
        guards=[authorize],
        security=BEARER_SECURITY,
        tags=["models"],
    )
