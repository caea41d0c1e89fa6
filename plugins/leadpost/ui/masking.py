"""What the page may show of secrets and leads: masked e-mails, no static parameter values, no lead values.

No response carries a secret or a lead value beyond the lead id and a masked email
(``j***@example.com``): auth values are masked by the hook, static parameter values (tokens
live there) are shown as ``***``, and a lead's own values are blanked out of delivery errors,
since receivers like to echo what they refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from datetime import date
from typing import Any
from urllib.parse import quote_plus

from leadpost.auth import MASK
from leadpost.config import ActionConfig

__all__ = ["mask_email", "mask_emails", "param_masker", "scrub_lead"]

_BLIND_MASK_MIN = 6  # shorter static values ("1", "true") are masked only where they sit as a parameter
_LEAD_VALUE_MIN = 3
_EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


def mask_email(email: str | None) -> str | None:
    """``joao@example.com`` -> ``j***@example.com``; anything else -> ``***``.

    :param email: the address, or ``None``.
    """
    if not email:
        return None
    local, at, domain = email.partition("@")
    return f"{local[:1]}{MASK}@{domain}" if at and local else MASK


def mask_emails(text: str | None) -> str | None:
    """Mask every e-mail address in a free text (receivers echo what they refused).

    :param text: an error or response text, or ``None``.
    """
    return None if text is None else _EMAIL_RE.sub(lambda m: mask_email(m.group(0)) or MASK, text)


def _sub_all(text: str, rules: list[tuple[re.Pattern[str], str]], words: Iterable[str]) -> str:
    for pattern, replacement in rules:
        text = pattern.sub(lambda m, r=replacement: m.group(1) + r, text)
    for word in words:
        text = text.replace(word, MASK)
    return text


def param_masker(action: ActionConfig) -> Callable[[str | None], str | None]:
    """A function blanking the action's static parameter values out of a text (tokens live there).

    :param action: the action whose ``params`` to blank out.
    """
    rules: list[tuple[re.Pattern[str], str]] = []
    words: set[str] = set()
    for name, value in action.params.items():
        if not value:
            continue
        qn, qv = quote_plus(name), quote_plus(value)
        # name=value in a query string or form body, "  name = value" lines, "name":"value" in JSON
        rules.append((re.compile(rf"((?<![^?&\s]){re.escape(qn)}=){re.escape(qv)}(?=&|\s|$)", re.M), MASK))
        rules.append((re.compile(rf"(^\s*{re.escape(name)} = ){re.escape(value)}$", re.M), MASK))
        jn, jv = json.dumps(name, ensure_ascii=False), json.dumps(value, ensure_ascii=False)
        rules.append((re.compile(rf"({re.escape(jn)}\s*:\s*){re.escape(jv)}"), f'"{MASK}"'))
        if len(value) >= _BLIND_MASK_MIN:
            words |= {value, qv}
    ordered = sorted(words, key=len, reverse=True)

    def mask(text: str | None) -> str | None:
        return None if text is None else _sub_all(text, rules, ordered)

    return mask


def scrub_lead(text: str | None, lead: dict[str, Any] | None) -> str | None:
    """Blank a lead's own values out of a delivery error (receivers like to echo what they refused).

    :param text: the error, or ``None``.
    :param lead: the lead's stored values, or ``None`` when unknown.
    """
    if text is None or lead is None:
        return text
    values = set()
    for key, value in lead.items():
        if key == "id" or value is None:
            continue
        raw = value.isoformat() if isinstance(value, date) else str(value).strip()
        if len(raw) >= _LEAD_VALUE_MIN:
            values |= {raw, quote_plus(raw)}
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, MASK)
    return text
