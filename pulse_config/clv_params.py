"""The CLV parameter file: written by ``pulse fit``, read once by the worker at start.

The file format belongs to configuration (like ``PULSE_*`` variables, it is
what an operator hands the worker), so it lives at the bottom: the worker reads
it once and passes the parameters into the frozen scoring configuration
(``pulse_config.settings.Settings.scoring``); scorers never read files.
Without the file the worker uses :data:`scoring.clv.DEFAULT_CLV_PARAMS`.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import orjson

from scoring.clv import DEFAULT_CLV_PARAMS, BgNbdParams, ClvParams, GammaGammaParams


class ClvParamsError(ValueError):
    """The parameter file exists but is not a valid parameter set."""


def _positive(raw: object, where: str, path: Path) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw) or raw <= 0:
        raise ClvParamsError(f"{path}: {where} must be a positive number, got {raw!r}")
    return float(raw)


def load_clv_params(path: Path | str) -> ClvParams:
    """The fitted parameters in ``path``; :data:`DEFAULT_CLV_PARAMS` when there is no such file.

    A file that exists but is not a parameter set is an error (naming the
    file): silently scoring with the defaults would hide a broken deployment.
    """
    path = Path(path)
    if not path.exists():
        return DEFAULT_CLV_PARAMS
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ClvParamsError(f"{path}: not a CLV parameter file: {exc}") from None
    if not isinstance(data, dict):
        raise ClvParamsError(f"{path}: expected a JSON object with bgnbd and gamma_gamma")
    sections = {}
    for name, fields in (("bgnbd", ("r", "alpha", "a", "b")), ("gamma_gamma", ("p", "q", "v"))):
        section = data.get(name)
        if not isinstance(section, dict):
            raise ClvParamsError(f"{path}: missing object {name!r}")
        sections[name] = {f: _positive(section.get(f), f"{name}.{f}", path) for f in fields}
    gamma_gamma = GammaGammaParams(**sections["gamma_gamma"])
    if gamma_gamma.q <= 1:
        raise ClvParamsError(f"{path}: gamma_gamma.q must be > 1 (finite mean order value), got {gamma_gamma.q}")
    fitted_on = data.get("fitted_on")
    if fitted_on is not None and not isinstance(fitted_on, str):
        raise ClvParamsError(f"{path}: fitted_on must be a string, got {fitted_on!r}")
    return ClvParams(
        bgnbd=BgNbdParams(**sections["bgnbd"]),
        gamma_gamma=gamma_gamma,
        time_unit_days=_positive(data.get("time_unit_days", DEFAULT_CLV_PARAMS.time_unit_days), "time_unit_days", path),
        fitted_on=fitted_on,
    )


def save_clv_params(params: ClvParams, path: Path | str) -> None:
    """Write ``params`` as JSON (creating the folder); atomically, so a running reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps(asdict(params), option=orjson.OPT_INDENT_2) + b"\n")
    tmp.replace(path)
