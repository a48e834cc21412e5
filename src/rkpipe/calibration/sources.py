"""Where calibration inputs come from: a prompts file, a ``datasets`` source, or a JSON file.

Every loader returns ``[{"input": str, "target": str | None}, ...]`` in source order; a ``None``
target is generated later by the float model (see :mod:`rkpipe.calibration.builder`).
"""

from __future__ import annotations

import glob
import logging
from pathlib import Path
from typing import Any

from rkpipe.calibration.validate import json_type, validate_calibration_file
from rkpipe.config.schema import CalibConfig
from rkpipe.errors import CalibrationError

log = logging.getLogger(__name__)

# Local data file suffix -> `datasets` builder name.
DATASET_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".txt": "text",
    ".text": "text",
    ".arrow": "arrow",
}
# Rows read from a dataset at most, as a multiple of num_samples (duplicates are dropped later).
ROWS_PER_SAMPLE = 10


def load_inputs(cfg: CalibConfig) -> list[dict[str, Any]]:
    """Load the calibration inputs named by ``cfg.source`` (``prompts``, ``dataset``, ``json``).

    Raises CalibrationError for an unknown source, a missing or unreadable file, an unknown
    column or an empty result.
    """
    loaders = {"prompts": _from_prompts, "dataset": _from_dataset, "json": _from_json}
    loader = loaders.get(cfg.source)
    if loader is None:
        raise CalibrationError(
            f"unknown calib.source {cfg.source!r}; expected one of {sorted(loaders)}"
        )
    inputs = loader(cfg)
    if not inputs:
        raise CalibrationError(f"calib.source={cfg.source} gave no inputs; check the source")
    log.info("loaded %d calibration input(s) from calib.source=%s", len(inputs), cfg.source)
    return inputs


def read_prompts(path: Path | str) -> list[str]:
    """Read one prompt per line; skip blank lines and lines starting with ``#``."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise CalibrationError(f"{path}: prompts file not found (calib.prompts_file)") from None
    except UnicodeDecodeError as exc:
        raise CalibrationError(
            f"{path}: not valid UTF-8 at byte offset {exc.start}; save it as UTF-8"
        ) from None
    stripped = (line.strip() for line in lines)
    return [line for line in stripped if line and not line.startswith("#")]


def _from_prompts(cfg: CalibConfig) -> list[dict[str, Any]]:
    return [{"input": prompt, "target": None} for prompt in read_prompts(cfg.prompts_file)]


def _from_json(cfg: CalibConfig) -> list[dict[str, Any]]:
    if not cfg.json_file:
        raise CalibrationError("calib.source=json needs calib.json_file (a calibration JSON file)")
    records = validate_calibration_file(Path(cfg.json_file), max_context=None)
    return [{"input": r["input"], "target": r["target"]} for r in records]


def _from_dataset(cfg: CalibConfig) -> list[dict[str, Any]]:
    if not cfg.dataset:
        raise CalibrationError(
            "calib.source=dataset needs calib.dataset (a hub dataset name or "
            "local json/jsonl/csv/parquet/txt file(s))"
        )
    dataset = open_dataset(cfg)
    columns = list(dataset.column_names)
    for column in filter(None, (cfg.input_column, cfg.target_column)):
        if column not in columns:
            raise CalibrationError(
                f"{cfg.dataset}: no column {column!r} (calib.input_column / "
                f"target_column); columns: {columns}"
            )
    return _rows_to_inputs(dataset, cfg)


def open_dataset(cfg: CalibConfig) -> Any:
    """Open ``cfg.dataset`` as a ``datasets.Dataset`` (local files by suffix, else the hub)."""
    from datasets import load_dataset

    files = sorted(glob.glob(cfg.dataset or "")) if not Path(cfg.dataset or "").is_dir() else []
    try:
        if files:
            builder, kwargs = _builder_for(files)
            return load_dataset(builder, data_files=files, split=cfg.split, **kwargs)
        return load_dataset(cfg.dataset, cfg.dataset_config, split=cfg.split)
    except CalibrationError:
        raise
    except Exception as exc:  # datasets raises many types (FileNotFound, ConnectionError, ...)
        detail = " ".join(str(exc).split())[:300]
        raise CalibrationError(
            f"{cfg.dataset}: cannot load the dataset (split {cfg.split!r}): {type(exc).__name__}: "
            f"{detail}; for a hub dataset check the name and network (HF_ENDPOINT), for local "
            "files use .json/.jsonl/.csv/.parquet/.txt (local files have only the split "
            "'train')"
        ) from None


def _builder_for(files: list[str]) -> tuple[str, dict[str, Any]]:
    suffixes = {Path(f).suffix.lower() for f in files}
    builders = {DATASET_BUILDERS.get(s) for s in suffixes}
    if len(builders) != 1 or None in builders:
        raise CalibrationError(
            f"{files[0]}: cannot tell the format from the suffix(es) "
            f"{sorted(suffixes)}; use one of {sorted(DATASET_BUILDERS)}"
        )
    kwargs = {"delimiter": "\t"} if suffixes == {".tsv"} else {}
    return builders.pop() or "", kwargs


def _rows_to_inputs(dataset: Any, cfg: CalibConfig) -> list[dict[str, Any]]:
    limit, inputs, skipped = cfg.num_samples * ROWS_PER_SAMPLE, [], 0
    for index, row in enumerate(dataset):
        text = _as_text(row[cfg.input_column], index, cfg)
        if not text:
            skipped += 1
            continue
        target = row[cfg.target_column] if cfg.target_column else None
        inputs.append({"input": text, "target": None if target is None else str(target)})
        if len(inputs) >= limit:
            log.info(
                "read the first %d non-empty rows of %s (%d x num_samples)",
                limit,
                cfg.dataset,
                ROWS_PER_SAMPLE,
            )
            break
    if skipped:
        log.info("skipped %d empty row(s) of %s", skipped, cfg.dataset)
    return inputs


def _as_text(value: Any, index: int, cfg: CalibConfig) -> str:
    """A row's input as text; a chat ``messages`` list gives its first user turn."""
    if value is None:
        return ""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value).strip()
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        user = [m.get("content") for m in value if m.get("role") == "user"]
        if user and isinstance(user[0], str):
            return user[0].strip()
    raise CalibrationError(
        f"{cfg.dataset}: row {index}: column {cfg.input_column!r} holds a "
        f"JSON {json_type(value)}, expected text; pick a text column with "
        "calib.input_column"
    )
