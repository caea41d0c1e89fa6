"""Typed triggers file: pydantic models, ``link:`` splitting, YAML-path errors and fingerprints.

Everything a trigger or an action may say is declared here once. Loading never half-works:
:func:`load_triggers` either returns a fully valid :class:`TriggersFile` or raises
:class:`~leadpost.exceptions.ConfigError` listing *every* problem as
``file:line: triggers[0].actions[1].fields.emial: unknown lead field 'emial'``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from leadpost.exceptions import ConfigError, UnknownActionError

__all__ = [
    "LEAD_FIELDS",
    "ActionConfig",
    "ActionRef",
    "Body",
    "Filters",
    "Method",
    "ScoreFilter",
    "TriggerConfig",
    "TriggersFile",
    "default_triggers_path",
    "load_triggers",
    "parse_triggers",
]

LEAD_FIELDS = ("email", "name", "birth_date", "phone", "company", "city", "state")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
SCHEDULE_PRESETS = (
    "@once",
    "@hourly",
    "@daily",
    "@weekly",
    "@monthly",
    "@quarterly",
    "@yearly",
    "@continuous",
)
DEFAULT_SCHEDULE = "*/15 * * * *"
_ID_RE = re.compile(r"^[a-z0-9_]+$")
# Parameter names travel in query strings and form bodies: plain ASCII, no spaces, no accents.
_PARAM_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-\[\]]+$")
_PLACEHOLDER_RE = re.compile(r"^\{([^{}]*)\}$")
_CTRL_RE = re.compile(r"[\x00-\x1f\x7f]")


class Method(StrEnum):
    GET = "GET"
    POST = "POST"


class Body(StrEnum):
    FORM = "form"
    JSON = "json"


# --- small validators -------------------------------------------------------------------------


def _lead_field(value: str) -> str:
    if value not in LEAD_FIELDS:
        raise ValueError(f"unknown lead field {value!r}{_did_you_mean(value, LEAD_FIELDS)}")
    return value


def _param_name(value: str) -> str:
    if not _PARAM_NAME_RE.match(value):
        raise ValueError(
            f"parameter name {value!r} may only hold ASCII letters, digits and _ . - [ ] "
            "(no spaces, no accents)"
        )
    return value


def _scalar_text(value: Any) -> str:
    # Static parameters are sent as text; YAML may hand us ints or bools.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        text = str(value)
        if _CTRL_RE.search(text):
            raise ValueError("control characters (CR, LF, TAB…) are not allowed in parameter values")
        return text
    raise ValueError("must be a text, number or boolean")


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str | int) else value


def _did_you_mean(value: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


LeadField = Annotated[str, AfterValidator(_lead_field)]
ParamName = Annotated[str, AfterValidator(_param_name)]
ParamValue = Annotated[str, BeforeValidator(_scalar_text)]
TextList = Annotated[tuple[str, ...], BeforeValidator(_as_list)]
Identifier = Annotated[str, Field(pattern=r"^[a-z0-9_]+$", min_length=1, max_length=200)]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- filters ----------------------------------------------------------------------------------


class ScoreFilter(_Frozen):
    """Comparisons on ``leads.score``; all given ones must hold."""

    eq: int | None = None
    gt: int | None = None
    gte: int | None = None
    lt: int | None = None
    lte: int | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> ScoreFilter:
        if all(v is None for v in (self.eq, self.gt, self.gte, self.lt, self.lte)):
            raise ValueError("give at least one of eq, gt, gte, lt, lte")
        return self


class Filters(_Frozen):
    """Lead selection of a trigger. Every given filter must hold (AND)."""

    tags_any: TextList = ()
    tags_all: TextList = ()
    tags_none: TextList = ()
    score: ScoreFilter | None = None
    funnel: TextList = ()
    state: TextList = ()
    city: TextList = ()
    company: TextList = ()
    captured_weekday: TextList = ()
    birthday_today: bool = False
    captured_after: datetime | None = None

    @field_validator("captured_weekday")
    @classmethod
    def _weekdays(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        days = tuple(str(v).lower()[:3] for v in value)
        for day, raw in zip(days, value, strict=True):
            if day not in WEEKDAYS:
                raise ValueError(f"unknown weekday {raw!r}; use {', '.join(WEEKDAYS)}")
        return days


# --- actions ----------------------------------------------------------------------------------


class ActionConfig(_Frozen):
    """One HttpPost action: where to send, how, and which lead fields under which names.

    :param id: unique within the trigger, ``[a-z0-9_]+``.
    :param url: the endpoint, everything before ``?`` (use ``params`` or ``link`` for the query).
    :param method: ``GET`` (fields in the query string) or ``POST`` (fields in the body).
    :param body: POST only: ``form`` (application/x-www-form-urlencoded, default) or ``json``.
    :param params: static parameters sent with every request (e.g. a token).
    :param fields: lead field -> parameter name the receiver expects.
    :param auth_conn_id: Airflow connection of type ``leadpost`` holding the authentication.
    """

    id: Identifier
    type: Literal["http_post"] = "http_post"
    url: str
    method: Method = Method.POST
    body: Body | None = None
    params: dict[ParamName, ParamValue] = Field(default_factory=dict)
    fields: dict[LeadField, ParamName] = Field(default_factory=dict)
    auth_conn_id: str | None = None
    resend_on_update: bool = False
    batch_size: int = Field(500, ge=1, le=10_000)
    parallelism: int = Field(4, ge=1, le=64)
    concurrency: int = Field(16, ge=1, le=512)
    rate_limit_per_s: float | None = Field(None, gt=0, le=100_000)
    max_leads_per_run: int | None = Field(None, ge=1)
    timeout_s: float = Field(15, gt=0, le=300)
    max_attempts: int = Field(8, ge=1, le=100)
    auto_test: bool = False

    @model_validator(mode="before")
    @classmethod
    def _split_link(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "link" not in data:
            return data
        data = dict(data)
        link = data.pop("link")
        clash = [k for k in ("url", "params", "fields") if k in data]
        if clash:
            raise ValueError(
                f"give either 'link' or 'url'/'params'/'fields', not both (found {', '.join(clash)})"
            )
        if not isinstance(link, str):
            raise ValueError("'link' must be a text")
        data.update(split_link(link))
        return data

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        if _CTRL_RE.search(url):
            raise ValueError("control characters (CR, LF, TAB…) are not allowed in the url")
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https"):
            raise ValueError(f"scheme {parts.scheme or '(none)'!r} is not allowed; use http:// or https://")
        if not parts.hostname:
            raise ValueError("the url has no host")
        if parts.query:
            raise ValueError(
                "the url carries a query string; put static parameters under 'params' "
                "(or give the whole example link as 'link')"
            )
        if parts.fragment:
            raise ValueError("the url carries a #fragment, which is never sent; remove it")
        if parts.username or parts.password:
            raise ValueError(
                "credentials in the url are not allowed; use auth_conn_id with a leadpost connection"
            )
        return url

    @model_validator(mode="after")
    def _check_shape(self) -> ActionConfig:
        if self.method is Method.GET and self.body is not None:
            raise ValueError("'body' applies to POST only; remove it or use method: POST")
        names = list(self.params) + list(self.fields.values())
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"parameter name(s) used more than once: {', '.join(dupes)}")
        if not self.fields:
            raise ValueError("map at least one lead field under 'fields' (e.g. fields: {email: email})")
        return self

    @property
    def body_kind(self) -> Body | None:
        """The body encoding actually used: ``None`` for GET, ``form`` when POST gives none."""
        if self.method is Method.GET:
            return None
        return self.body or Body.FORM

    def request_shape(self) -> dict[str, Any]:
        """Everything that shapes the request, for the activation fingerprint."""
        return {
            "url": self.url,
            "method": str(self.method),
            "body": str(self.body_kind) if self.body_kind else None,
            "params": dict(sorted(self.params.items())),
            "fields": dict(sorted(self.fields.items())),
            "auth_conn_id": self.auth_conn_id,
            "timeout_s": self.timeout_s,
        }

    def fingerprint(self, *, auth_digest: str = "") -> str:
        """Stable hash of the request shape plus a digest of the auth connection's settings."""
        blob = json.dumps({"shape": self.request_shape(), "auth": auth_digest}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def masked_repr(self) -> str:
        params = f"<{len(self.params)} hidden>"
        return f"ActionConfig(id={self.id!r}, method={self.method}, url={self.url!r}, params={params})"

    __repr__ = masked_repr  # static params often hold tokens


def split_link(link: str) -> dict[str, Any]:
    """Split an example link into ``url``, static ``params`` and lead ``fields``.

    ``https://x.com/post?token=123&email={email}`` -> url ``https://x.com/post``,
    params ``{token: "123"}``, fields ``{email: "email"}``.
    """
    url, _, query = link.partition("?")
    params: dict[str, str] = {}
    fields: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        placeholder = _PLACEHOLDER_RE.match(value)
        if placeholder:
            field = placeholder.group(1)
            if field not in LEAD_FIELDS:
                raise ValueError(
                    f"placeholder '{{{field}}}' names an unknown lead field"
                    f"{_did_you_mean(field, LEAD_FIELDS)}; "
                    f"known: {', '.join(LEAD_FIELDS)}"
                )
            if field in fields:
                raise ValueError(f"lead field {field!r} appears twice in the link")
            fields[field] = name
        else:
            if name in params:
                raise ValueError(f"parameter {name!r} appears twice in the link")
            params[name] = value
    return {"url": url, "params": params, "fields": fields}


# --- triggers ---------------------------------------------------------------------------------


class TriggerConfig(_Frozen):
    """A smart trigger: a lead selection, a schedule, and the actions run on each selected lead."""

    id: Identifier
    schedule: str | None = DEFAULT_SCHEDULE
    timezone: str = "UTC"
    pool: str | None = Field(None, min_length=1, max_length=256)  # Airflow pool for the dispatch tasks
    filters: Filters = Filters()
    actions: tuple[ActionConfig, ...] = Field(min_length=1)

    @field_validator("schedule")
    @classmethod
    def _check_schedule(cls, value: str | None) -> str | None:
        if value is None or value in SCHEDULE_PRESETS:
            return value
        from croniter import croniter  # ships with Airflow; only needed when a cron is given

        if not croniter.is_valid(value):
            raise ValueError(
                f"invalid cron expression {value!r}; use 5 fields or one of {', '.join(SCHEDULE_PRESETS)}"
            )
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown timezone {value!r}; use an IANA name such as 'America/Sao_Paulo'"
            ) from None
        return value

    @property
    def dag_id(self) -> str:
        return f"leadpost_{self.id}"

    def action(self, action_id: str) -> ActionConfig:
        for action in self.actions:
            if action.id == action_id:
                return action
        raise UnknownActionError(f"trigger {self.id!r} has no action {action_id!r}")


class TriggersFile(_Frozen):
    """The whole triggers file."""

    triggers: tuple[TriggerConfig, ...] = ()

    def trigger(self, trigger_id: str) -> TriggerConfig:
        for trigger in self.triggers:
            if trigger.id == trigger_id:
                return trigger
        known = ", ".join(t.id for t in self.triggers) or "none"
        raise UnknownActionError(f"no trigger {trigger_id!r} (known: {known})")

    def resolve(self, ref: ActionRef | str) -> tuple[TriggerConfig, ActionConfig]:
        ref = ActionRef.parse(ref) if isinstance(ref, str) else ref
        trigger = self.trigger(ref.trigger_id)
        return trigger, trigger.action(ref.action_id)

    def action_refs(self) -> list[ActionRef]:
        return [ActionRef(t.id, a.id) for t in self.triggers for a in t.actions]


@dataclass(frozen=True, order=True)
class ActionRef:
    """``TRIGGER.ACTION``, parsed once."""

    trigger_id: str
    action_id: str

    @classmethod
    def parse(cls, text: str) -> ActionRef:
        trigger_id, dot, action_id = text.partition(".")
        if not dot or not _ID_RE.match(trigger_id) or not _ID_RE.match(action_id):
            raise UnknownActionError(f"{text!r} is not TRIGGER.ACTION (e.g. vip_sp.crm)")
        return cls(trigger_id, action_id)

    @property
    def key(self) -> str:
        return f"{self.trigger_id}.{self.action_id}"

    def __str__(self) -> str:
        return self.key


# --- loading ----------------------------------------------------------------------------------


def default_triggers_path() -> Path:
    """``$LEADPOST_TRIGGERS``, else ``triggers.yaml`` in the dags folder, else ``dags/triggers.yaml``."""
    env = os.environ.get("LEADPOST_TRIGGERS")
    if env:
        return Path(env)
    dags_folder = os.environ.get("AIRFLOW__CORE__DAGS_FOLDER")
    if dags_folder and (Path(dags_folder) / "triggers.yaml").exists():
        return Path(dags_folder) / "triggers.yaml"
    return Path("dags") / "triggers.yaml"


def load_triggers(path: str | os.PathLike[str]) -> TriggersFile:
    """Read and validate a triggers file; raise :class:`ConfigError` listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found (set LEADPOST_TRIGGERS or create it)"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None
    return parse_triggers(text, source=str(path))


def parse_triggers(text: str, *, source: str = "<triggers>") -> TriggersFile:
    """Validate triggers YAML given as text (see :func:`load_triggers`)."""
    try:
        root = yaml.compose(text, Loader=_StrictLoader)
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}: malformed YAML: {problem}"], source=source) from None
    if data is None:
        data = {"triggers": []}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}:1: the file must be a mapping with a 'triggers' list"], source=source)

    problems: list[tuple[tuple[Any, ...], str]] = _duplicate_ids(data)
    try:
        parsed = TriggersFile.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()

        # "too short after validation" only echoes failures of the items themselves
        def echoes_items(err: Any) -> bool:
            loc = tuple(err["loc"])
            return err["type"] == "too_short" and any(
                len(other["loc"]) > len(loc) and tuple(other["loc"][: len(loc)]) == loc for other in errors
            )

        errors = [e for e in errors if not echoes_items(e)]
        problems += [_describe(err) for err in errors]
        parsed = None
    if problems:
        raise ConfigError([_place(source, root, loc) + msg for loc, msg in problems], source=source)
    assert parsed is not None
    return parsed


def _duplicate_ids(data: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    problems: list[tuple[tuple[Any, ...], str]] = []
    triggers = data.get("triggers")
    if not isinstance(triggers, list):
        return problems
    seen: set[Any] = set()
    for i, trigger in enumerate(triggers):
        if not isinstance(trigger, dict):
            continue
        tid = trigger.get("id")
        if tid in seen:
            problems.append((("triggers", i, "id"), f"duplicate trigger id {tid!r}"))
        seen.add(tid)
        actions = trigger.get("actions")
        if isinstance(actions, list):
            seen_actions: set[Any] = set()
            for j, action in enumerate(actions):
                aid = action.get("id") if isinstance(action, dict) else None
                if aid is not None and aid in seen_actions:
                    problems.append((("triggers", i, "actions", j, "id"), f"duplicate action id {aid!r}"))
                seen_actions.add(aid)
    return problems


def _describe(err: Any) -> tuple[tuple[Any, ...], str]:
    """Turn a pydantic error into (loc, our wording)."""
    loc = tuple(p for p in err["loc"] if p != "[key]")
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        return loc, f"unknown key {loc[-1]!r}{_did_you_mean(str(loc[-1]), allowed)}"
    if kind == "missing":
        return loc, "required key is missing"
    if kind == "string_pattern_mismatch":
        return loc, f"{err['input']!r} may only hold lowercase letters, digits and _"
    if kind == "too_short" and loc and loc[-1] == "actions":
        return loc, "a trigger needs at least one action"
    msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return loc, msg


def _allowed_keys(parent: tuple[Any, ...]) -> list[str]:
    names = [p for p in parent if isinstance(p, str)]
    last = names[-1] if names else ""
    model = {
        "triggers": TriggerConfig,
        "actions": ActionConfig,
        "filters": Filters,
        "score": ScoreFilter,
    }.get(last, TriggersFile)
    return list(model.model_fields)


def _place(source: str, root: yaml.Node | None, loc: tuple[Any, ...]) -> str:
    """``file:line: yaml.path: `` for an error loc."""
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    line = _line_of(root, loc)
    where = f"{source}:{line}" if line else source
    return f"{where}: {path}: " if path else f"{where}: "


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """Line (1-based) of the deepest YAML node the loc reaches."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == part), None)
            if match is None:
                break
            key, node = match
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)
