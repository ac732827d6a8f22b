"""The one schema of a run record, checked by :func:`adbench.results.read_record` whenever a record is read.

It types the fields the tables, the report and ``resume`` read (strict: no string for a number, no number for a
string); metrics are numbers in [0, 1] or null. Other fields are free, and fields a record lacks are allowed
(records written by older adbench versions).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Metric = Optional[Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]]
Seconds = Optional[Annotated[float, Field(ge=0.0, allow_inf_nan=False)]]
Count = Optional[Annotated[int, Field(ge=0)]]


class _Open(BaseModel):
    """Strict types for the named fields; any other field is kept as it is."""

    model_config = ConfigDict(strict=True, extra="allow")


class _Named(_Open):
    name: str


class _Coreset(_Open):
    ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0


class _Method(_Named):
    coreset: Optional[_Coreset] = None
    variant: Optional[str] = None


class _Tiling(_Open):
    size: Optional[int] = None
    stride: Optional[int] = None


class _Dataset(_Named):
    image_size: Optional[int] = None
    crop_size: Optional[int] = None
    tiling: Optional[_Tiling] = None


class _Preset(_Open):
    name: Optional[str] = None


class _Config(_Open):
    method: _Method
    dataset: _Dataset
    category: str
    seed: int
    preset: Optional[_Preset] = None


class _PerImage(_Open):
    score: list[Annotated[float, Field(allow_inf_nan=False)]] = []
    label: list[Literal[0, 1]] = []
    defect_type: list[str] = []
    file: list[str] = []


class _LogEntry(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    __pydantic_extra__: dict[str, Optional[float]]

    stage: str
    step: int


class _CacheEntry(_Open):
    entry: str
    hit: bool


Interval = Optional[Annotated[list[Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]],
                              Field(min_length=2, max_length=2)]]


class _Intervals(_Open):
    """95 % test-set intervals ([low, high] per metric, null where undefined) and how they were made."""

    level: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.95
    n_resamples: Annotated[int, Field(ge=1)] = 1000
    seed: int = 0
    image_auroc: Interval = None
    pixel_auroc: Interval = None
    aupro: Interval = None
    image_f1_max: Interval = None
    image_auroc_delong: Interval = None
    pixel_error_bound: Optional[dict[str, Optional[Annotated[float, Field(ge=0.0, allow_inf_nan=False)]]]] = None
    seconds: Seconds = None


class _PixelHistograms(_Open):
    """Per-image pixel counts per score bin (``adbench.intervals.PixelHistograms``), packed arrays."""

    bins: Annotated[int, Field(ge=2)]
    n_images: Annotated[int, Field(ge=1)]
    n_components: Annotated[int, Field(ge=0)]
    count_dtype: Literal["<u2", "<u4"]
    edges: str
    normal: str
    components: str
    component_image: str


class RunRecord(_Open):
    """A run record (``<results_dir>/runs/.../*.json``): status, config, metrics, times, per-image data, curves."""

    status: Literal["ok", "failed", "missing"] = "ok"
    config: _Config
    metrics: dict[str, Metric] = {}
    extra_metrics: Optional[dict[str, dict[str, Metric]]] = None
    finished_at: Optional[str] = None
    fit_s: Seconds = None
    predict_s: Seconds = None
    evaluate_s: Seconds = None
    calibrate_s: Seconds = None
    peak_rss_mb: Seconds = None
    n_train: Count = None
    n_test: Count = None
    n_calibration: Count = None
    per_image: Optional[_PerImage] = None
    curves: Optional[dict[str, dict[str, list[Annotated[float, Field(allow_inf_nan=False)]]]]] = None
    train_log: Optional[list[_LogEntry]] = None
    overlays: Optional[list[str]] = None
    checkpoint: Optional[str] = None
    tensorboard: Optional[str] = None
    feature_cache: Optional[list[_CacheEntry]] = None
    intervals: Optional[_Intervals] = None
    pixel_histograms: Optional[_PixelHistograms] = None


def record_problem(rec: Any) -> str | None:
    """None when ``rec`` follows :class:`RunRecord`; else its first error, naming the field, e.g.
    ``metrics.image_auroc = 7.5: Input should be less than or equal to 1``."""
    try:
        RunRecord.model_validate(rec)
        return None
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"]) or "the record"
        value = "" if first["type"] == "missing" else f" = {first['input']!r}"[:80]
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        return f"{field}{value}: {first['msg']}{more}"
