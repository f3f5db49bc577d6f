"""A tuning study's search space: `KEY=SPEC` lines parsed, checked against the base config, and sampled.

    temperature=log:1,32     a float on a log scale        weights.kd=0.1,0.95   a float, uniform
    epochs=int:5,30          an integer                    method=kd,dkd,dist    a choice (any non-numeric list)
    method.beta=0,10         a method's own parameter: it applies only to trials whose method has one called
                             beta; `dkd.beta=...` applies to dkd's alone
    choice:a,b,...           an explicit choice (numbers too: `batch_size=choice:32,64,128`)

A space is refused before anything is recorded (one line naming the culprit) when a SPEC is malformed, a
range is empty, a key is unknown, a choice of `method` is not a method, or a value at an end of a range
makes a config that cannot run. No torch and no Optuna at import: the CLI and the app parse spaces cheaply.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from kdcore.config import RunConfig, parse_value, set_dotted
from kdcore.errors import ConfigError
from kdcore.methods import METHODS, get_method

NOT_TUNABLE = {"seed": "tuning picks settings, not lucky seeds: --seeds K re-runs the best settings on K seeds",
               "name": "a run's name is no setting", "baseline": "trials never train the student alone; "
               "the confirmation runs do", "device": "the device is no setting to tune"}


@dataclass(frozen=True)
class Dimension:
    """One searched setting: `key` as written (a dotted config key, `method`, `method.<p>` or `<method>.<p>`)."""

    key: str
    kind: str  # "float", "int" or "choice"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    @property
    def method_param(self) -> tuple[str | None, str] | None:
        """(method or None for any method, parameter) for a method's own parameter; None for other settings."""
        head, _, param = self.key.partition(".")
        if not param or "." in param:
            return None
        if head in ("method", "method_params"):
            return None, param
        if head in METHODS:
            return head, param
        return None

    def applies_to(self, method: str) -> bool:
        """Whether trials of `method` use this dimension (always, unless it is some method's own parameter)."""
        target = self.method_param
        if target is None:
            return True
        owner, param = target
        return (owner is None or owner == method) and param in METHODS[method].spec.params

    def config_key(self) -> str:
        """The dotted key `set_dotted` takes."""
        target = self.method_param
        return f"method_params.{target[1]}" if target else self.key

    def ends(self) -> list[Any]:
        """The values that bound what this dimension can produce: both ends of a range, every choice."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]

    @property
    def text(self) -> str:
        """The `KEY=SPEC` this dimension was parsed from (normalised)."""
        if self.kind == "choice":
            return f"{self.key}=choice:{','.join(str(c) for c in self.choices)}"
        prefix = "int:" if self.kind == "int" else "log:" if self.log else ""
        return f"{self.key}={prefix}{self.low:g},{self.high:g}"

    def distribution(self):
        """Optuna's distribution for it (imports Optuna)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(float(self.low), float(self.high), log=self.log)


def parse_dimension(text: str) -> Dimension:
    """`temperature=log:1,32` → Dimension; ConfigError naming what is wrong."""
    key, sep, spec = text.partition("=")
    key, spec = key.strip(), spec.strip()
    if not sep or not key or not spec:
        raise ConfigError(f"--space expects KEY=SPEC (lo,hi | log:lo,hi | int:lo,hi | choice:a,b,...), got {text!r}")
    kind, colon, rest = spec.partition(":")
    if not colon or kind not in ("log", "int", "choice"):
        kind, rest = "", spec
    values = [v.strip() for v in rest.split(",")]
    if any(not v for v in values):
        raise ConfigError(f"--space {key}: {spec!r} has an empty value")
    if kind == "choice" or (not kind and not all(_is_number(v) for v in values)) or (not kind and len(values) > 2):
        choices = tuple(parse_value(v) for v in values)
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"--space {key}: a choice repeats a value in {spec!r}")
        return Dimension(key, "choice", choices=choices)
    if len(values) != 2 or not all(_is_number(v) for v in values):
        raise ConfigError(f"--space {key}: {spec!r} must be two numbers lo,hi (with {kind or 'no'} prefix)")
    low, high = float(values[0]), float(values[1])
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError(f"--space {key}: {spec!r} must be finite numbers")
    if low >= high:
        raise ConfigError(f"--space {key}: the range {spec!r} is empty (lo must be below hi)")
    if kind == "log" and low <= 0:
        raise ConfigError(f"--space {key}: a log scale needs 0 < lo, got {spec!r}")
    if kind == "int":
        if not (low.is_integer() and high.is_integer()):
            raise ConfigError(f"--space {key}: int:lo,hi takes whole numbers, got {spec!r}")
        return Dimension(key, "int", low, high)
    return Dimension(key, "float", low, high, log=kind == "log")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_space(specs: list[str]) -> list[Dimension]:
    """Every `--space KEY=SPEC`, parsed; an empty space or a key given twice is refused."""
    dims = [parse_dimension(s) for s in specs]
    if not dims:
        raise ConfigError("a study needs at least one --space KEY=SPEC (e.g. --space temperature=log:1,32)")
    seen = set()
    for dim in dims:
        if dim.key in seen:
            raise ConfigError(f"--space {dim.key} is given twice")
        seen.add(dim.key)
    return dims


def methods_of(dims: list[Dimension], base: dict[str, Any]) -> list[str]:
    """The methods trials can use: the `method` dimension's choices, else the base config's method."""
    for dim in dims:
        if dim.key == "method":
            return [str(c) for c in dim.choices]
    return [base.get("method", "kd")]


def check_space(base: dict[str, Any], dims: list[Dimension]) -> None:
    """Refuse a space that can produce a config that cannot run, naming the first value that does."""
    RunConfig.from_dict(copy.deepcopy(base))  # a bad base is reported as such, not as a value of the space
    for dim in dims:
        root = dim.key.split(".")[0]
        if root in NOT_TUNABLE:
            raise ConfigError(f"--space {dim.key}: {NOT_TUNABLE[root]}")
        if dim.key == "method":
            if dim.kind != "choice":
                raise ConfigError(f"--space method: a method is a choice, e.g. method=kd,dkd,dist; got {dim.text}")
            for name in dim.choices:
                try:
                    get_method(name)
                except ConfigError as exc:
                    raise ConfigError(f"--space method: {exc}") from None
    methods = methods_of(dims, base)
    for dim in dims:
        target = dim.method_param
        if target is not None and not any(dim.applies_to(m) for m in methods):
            owners = [m for m, method in METHODS.items() if target[1] in method.spec.params]
            raise ConfigError(f"--space {dim.key}: no method of this study ({', '.join(methods)}) has a parameter "
                              f"{target[1]!r}" + (f" ({', '.join(owners)} do)" if owners else ""))
    for method in methods:
        own = [d for d in dims if d.key != "method" and d.applies_to(method)]
        _check({}, base, method, dims)
        for dim in own:
            for value in dim.ends():
                _check({dim.key: value}, base, method, dims)
        for end in (0, -1):  # every dimension at the same end at once
            _check({d.key: d.ends()[end] for d in own}, base, method, dims)


def _check(values: dict[str, Any], base: dict[str, Any], method: str, dims: list[Dimension]) -> None:
    try:
        config_for(base, {**values, "method": method}, dims)
    except ConfigError as exc:
        if not values:
            raise ConfigError(f"--space: method={method} cannot run with this config: {exc}") from None
        if "unknown config key" in str(exc) and len(values) == 1:
            raise ConfigError(f"--space {next(iter(values))}: {exc}") from None
        what = ", ".join(f"{key}={value}" for key, value in values.items())
        raise ConfigError(f"--space {what} cannot run (method {method}): {exc}") from None


def config_for(base: dict[str, Any], values: dict[str, Any], dims: list[Dimension]) -> RunConfig:
    """The validated config of a trial: `base` with the trial's `values` (by dimension key) set."""
    data = copy.deepcopy(base)
    method = values.get("method", data.get("method", "kd"))
    if method != data.get("method", "kd"):
        data["method_params"] = {}  # the base method's parameters are not the chosen one's
    data["method"] = method
    by_key = {d.key: d for d in dims}
    for key, value in values.items():
        if key == "method":
            continue
        dim = by_key.get(key)
        set_dotted(data, dim.config_key() if dim else key, value)
    return RunConfig.from_dict(data)


def sample(trial, dims: list[Dimension], base: dict[str, Any]) -> dict[str, Any]:
    """Ask an Optuna trial for one point of the space, define-by-run: the method first, then the dimensions its
    trials use (so a method's own parameters are sampled only for it)."""
    values: dict[str, Any] = {}
    method = base.get("method", "kd")
    for dim in dims:
        if dim.key == "method":
            method = values["method"] = _suggest(trial, dim)
    for dim in dims:
        if dim.key != "method" and dim.applies_to(method):
            values[dim.key] = _suggest(trial, dim)
    return values


def _suggest(trial, dim: Dimension) -> Any:
    if dim.kind == "choice":
        return trial.suggest_categorical(dim.key, list(dim.choices))
    if dim.kind == "int":
        return trial.suggest_int(dim.key, int(dim.low), int(dim.high), log=dim.log)
    return trial.suggest_float(dim.key, float(dim.low), float(dim.high), log=dim.log)
