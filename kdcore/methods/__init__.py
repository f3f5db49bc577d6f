"""The distillation methods KD Lab offers: one module per method, registered here in one tuple.

`METHODS` maps a name to its `Method`; `RunConfig.method` picks one and `RunConfig.method_params`
overrides its parameters (`--set method=at --set method.weight=500`). A method module holds its
spec (paper, parameters, needs, recorded terms), its checks, its objective and its formula, so
nothing outside it branches on its name. Adding a method: write `kdcore/methods/<name>.py` with a
`METHOD`, add it to `_ALL` below, and add its test. This package imports no torch until a run
trains (see `kdcore.methods.base`).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from kdcore.errors import ConfigError
from kdcore.methods import (at, crd, ctkd, dist, distilbert, dkd, dml, fitnets, function_matching, kd, kd_ls,
                            logit_mse, minilm, multi_teacher, pkt, rkd, sp)
from kdcore.methods.base import COMMON_TERMS, Method, MethodSpec, ParamSpec, Term, check_params, default_value, with_defaults

__all__ = ["METHODS", "COMMON_TERMS", "Method", "MethodSpec", "ParamSpec", "Term", "get_method", "method_spec",
           "validate_method", "validate_params", "resolve_params", "teacher_seeds", "series_terms", "list_methods",
           "default_value"]

_ALL: tuple[Method, ...] = (
    kd.METHOD, fitnets.METHOD, at.METHOD, sp.METHOD, rkd.METHOD, pkt.METHOD, dkd.METHOD, dist.METHOD,
    multi_teacher.METHOD, dml.METHOD, function_matching.METHOD, crd.METHOD, kd_ls.METHOD, ctkd.METHOD,
    distilbert.METHOD, minilm.METHOD, logit_mse.METHOD,
)
METHODS: dict[str, Method] = {method.spec.name: method for method in _ALL}


def get_method(name: str) -> Method:
    """The method called `name`; ConfigError naming the valid methods otherwise."""
    method = METHODS.get(name) if isinstance(name, str) else None
    if method is None:
        raise ConfigError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    return method


def method_spec(name: str) -> MethodSpec:
    return get_method(name).spec


def validate_params(method: str, params: Any) -> dict[str, float]:
    """Check `params` against the method's ParamSpecs; returns them normalised (floats, ints for counts)."""
    return check_params(method_spec(method), params)


def resolve_params(method: str, params: dict[str, float] | None = None) -> dict[str, float]:
    """The method's parameters with defaults filled in for those not given."""
    return with_defaults(method_spec(method), params)


def validate_method(config: Any) -> dict[str, float]:
    """Validate `config.method` and `config.method_params` against the rest of a RunConfig.

    Returns the normalised method_params (only those given; defaults are not filled in, so a stored
    config says what the user chose). Raises ConfigError with a one-line message.
    """
    from kdcore.dataset_names import is_text

    method = get_method(config.method)
    params = check_params(method.spec, config.method_params)
    text = is_text(config.dataset)
    if text and method.spec.not_for_text:
        raise ConfigError(f"method {method.spec.name} does not apply to text ({config.dataset}): "
                          f"{method.spec.not_for_text}")
    if method.spec.text_only and not text:
        raise ConfigError(f"method {method.spec.name} distils text Transformers; dataset {config.dataset} is not "
                          "text (try rotten-tomatoes or csv:<path>)")
    method.check(config)
    return params


def teacher_seeds(config: Any) -> list[int]:
    """Seeds of the teachers the run's method learns from (several for an ensemble)."""
    return get_method(config.method).teacher_seeds(config)


def series_terms(method: str) -> dict[str, Term]:
    """Every series a run of `method` records per step, `train_<term>` → Term, in drawing order.

    An unknown name (a run from another version) gets the common terms only.
    """
    own = METHODS[method].spec.terms if method in METHODS else ()
    return {f"train_{term.name}": term for term in (*COMMON_TERMS, *own)}


def list_methods() -> list[dict[str, Any]]:
    """One JSON-able row per method: name, title, paper, explanation, flags, params and recorded terms."""
    rows = []
    for method in METHODS.values():
        row = asdict(method.spec)
        row["params"] = {key: asdict(p) for key, p in method.spec.params.items()}
        row["terms"] = [asdict(term) for term in method.spec.terms]
        rows.append(row)
    return rows
