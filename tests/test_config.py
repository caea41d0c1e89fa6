"""The triggers file: typed models, link splitting, and errors that name their place."""

from __future__ import annotations

import textwrap

import pytest

from leadpost.config import ActionConfig, ActionRef, Filters, load_triggers, parse_triggers
from leadpost.exceptions import ConfigError, UnknownActionError

GOOD = """
triggers:
  - id: vip_sp
    filters: {tags_any: [vip], score: {gte: 10}, state: SP}
    actions:
      - id: crm
        link: "https://minhaaplicacao.com/meupost?token=0132456789&email={email}"
"""


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_triggers(textwrap.dedent(text), source="t.yaml")
    return info.value.problems


def _action_yaml(body: str) -> str:
    return "triggers:\n  - id: t\n    actions:\n      - id: a\n" + textwrap.indent(
        textwrap.dedent(body), " " * 8
    )


def test_seed_link_is_split_into_url_params_and_fields():
    triggers = parse_triggers(GOOD)
    action = triggers.trigger("vip_sp").action("crm")
    assert action.url == "https://minhaaplicacao.com/meupost"
    assert action.params == {"token": "0132456789"}  # leading zero kept
    assert action.fields == {"email": "email"}
    assert action.method == "POST" and action.body_kind == "form"
    assert triggers.triggers[0].schedule == "*/15 * * * *"
    assert triggers.triggers[0].filters.state == ("SP",)


def test_shipped_example_file_is_valid():
    from tests.conftest import REPO

    triggers = load_triggers(REPO / "dags" / "triggers.yaml")
    assert [t.id for t in triggers.triggers] == ["vip_sp", "birthdays"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "url: https://x.com/p\nfields: {emial: email}\n",
            "t.yaml:6: triggers[0].actions[0].fields.emial: unknown lead field 'emial' (did you mean 'email'?)",
        ),
        ("url: https://x.com/p?token=1\nfields: {email: e}\n", "put static parameters under 'params'"),
        ("url: https://x.com/p\nfields: {email: e-mail ok}\n", "parameter name 'e-mail ok'"),
        ("url: https://x.com/p\nfields: {name: nomé}\n", "no accents"),
        (
            "url: https://x.com/p\nmethod: GET\nbody: json\nfields: {email: e}\n",
            "'body' applies to POST only",
        ),
        ("url: ftp://x.com/p\nfields: {email: e}\n", "scheme 'ftp' is not allowed"),
        ("url: file:///etc/passwd\nfields: {email: e}\n", "scheme 'file' is not allowed"),
        ("link: 'https://x.com/p?e={emial}'\n", "placeholder '{emial}' names an unknown lead field"),
        ("url: https://x.com/p\nfields: {email: e}\nparams: {e: 1}\n", "used more than once: e"),
        ("url: https://x.com/p\nfields: {email: e}\nbatch_size: 0\n", "triggers[0].actions[0].batch_size"),
        (
            "url: https://x.com/p\nfields: {email: e}\nconcurrency: 100000\n",
            "triggers[0].actions[0].concurrency",
        ),
        ('url: https://x.com/p\nfields: {email: e}\nparams: {t: "a\\r\\nX-Evil: 1"}\n', "control characters"),
        ("url: https://x.com/p\nfields: {email: e}\nretries: 3\n", "unknown key 'retries'"),
        ("url: https://x.com/p\n", "map at least one lead field"),
    ],
)
def test_action_errors_name_their_place(body, expected):
    problems = _problems(_action_yaml(body))
    assert any(expected in p for p in problems), problems


def test_every_problem_is_reported_at_once_with_line_numbers():
    problems = _problems(
        """
        triggers:
          - id: a
            timezone: Mars/Olympus
            schedule: "every day"
            actions:
              - {id: x, url: "https://x.com", fields: {email: e}}
              - {id: x, url: "https://x.com", fields: {email: e}}
          - id: a
            actions: []
        """
    )
    text = "\n".join(problems)
    assert "t.yaml:4: triggers[0].timezone: unknown timezone 'Mars/Olympus'" in text
    assert "triggers[0].schedule: invalid cron expression 'every day'" in text
    assert "triggers[0].actions[1].id: duplicate action id 'x'" in text
    assert "triggers[1].id: duplicate trigger id 'a'" in text
    assert "triggers[1].actions: a trigger needs at least one action" in text


def test_malformed_yaml_and_duplicate_keys_are_refused():
    assert "malformed YAML" in _problems("triggers: [\n")[0]
    assert "duplicate key 'url'" in _problems(_action_yaml("url: https://a.com\nurl: https://b.com\n"))[0]


def test_fingerprint_changes_with_anything_that_shapes_the_request():
    base = ActionConfig(id="a", url="https://x.com/p", fields={"email": "email"}, params={"token": "1"})
    same = ActionConfig(id="a", url="https://x.com/p", fields={"email": "email"}, params={"token": "1"})
    assert base.fingerprint() == same.fingerprint()
    for change in (
        {"params": {"token": "2"}},
        {"fields": {"email": "mail"}},
        {"method": "GET"},
        {"body": "json"},
    ):
        assert base.model_copy(update=change).fingerprint() != base.fingerprint(), change
    assert base.fingerprint(auth_digest="x") != base.fingerprint(auth_digest="y")
    # batch sizes and concurrency do not shape the request: no re-test needed
    assert base.model_copy(update={"concurrency": 64}).fingerprint() == base.fingerprint()


def test_static_params_are_not_in_repr():
    action = ActionConfig(
        id="a", url="https://x.com/p", fields={"email": "e"}, params={"token": "s3cr3t-canary"}
    )
    assert "s3cr3t-canary" not in repr(action)


def test_action_ref_parses_once():
    assert ActionRef.parse("vip_sp.crm") == ActionRef("vip_sp", "crm")
    with pytest.raises(UnknownActionError, match=r"TRIGGER\.ACTION"):
        ActionRef.parse("vip_sp")


def test_weekdays_are_normalised():
    assert Filters(captured_weekday=["Monday", "tue"]).captured_weekday == ("mon", "tue")
