"""``leadpost leads generate N``: realistic, deterministic synthetic Brazilian leads.

Names carry accents (João, Conceição, Gonçalves…), emails are derived from the name and the
lead id (so they are unique across any id range), about a fifth of the optional fields are
missing, cities match their state, and a few leads have their birthday *today* (relative to
``now``) or on 29 February, so filter demos have something to find. The same ``seed``,
``start_id`` and ``now`` always give the same leads.

``dags/sample_leads.csv`` is ``write_leads("dags/sample_leads.csv", 1000, seed=7,
now=SAMPLE_NOW)``.
"""

from __future__ import annotations

import csv
import json
import random
import unicodedata
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from os import PathLike
from pathlib import Path
from typing import Any, Literal

__all__ = ["GENERATED_COLUMNS", "SAMPLE_NOW", "generate_leads", "write_leads"]

# Column order of generated files; updated_at is left to the import (it stamps "now").
GENERATED_COLUMNS = (
    "id",
    "email",
    "name",
    "birth_date",
    "phone",
    "company",
    "city",
    "state",
    "score",
    "status",
    "funnel",
    "tags",
    "captured_at",
)
# The reference time of the committed sample file.
SAMPLE_NOW = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)

_FIRST_NAMES = (
    "João", "José", "Antônio", "Francisco", "Carlos", "Paulo", "Pedro", "Lucas", "Luiz", "Marcos",
    "Gabriel", "Rafael", "Daniel", "Marcelo", "Bruno", "Eduardo", "Felipe", "Raimundo", "Rodrigo",
    "Sebastião", "André", "Fábio", "Márcio", "Sérgio", "Vinícius", "Otávio", "Caio", "Thiago",
    "Matheus", "Gustavo", "Rogério", "Júlio", "Maria", "Ana", "Francisca", "Antônia", "Adriana",
    "Juliana", "Márcia", "Fernanda", "Patrícia", "Aline", "Conceição", "Lúcia", "Luíza", "Mônica",
    "Letícia", "Cláudia", "Beatriz", "Camila", "Larissa", "Júlia", "Tânia", "Valéria", "Débora",
    "Célia", "Inês", "Renata", "Mariana", "Vitória", "Sônia", "Glória", "Élida", "Iara",
)  # fmt: skip
_SURNAMES = (
    "Silva", "Santos", "Oliveira", "Souza", "Rodrigues", "Ferreira", "Alves", "Pereira", "Lima",
    "Gomes", "Costa", "Ribeiro", "Martins", "Carvalho", "Almeida", "Lopes", "Soares", "Fernandes",
    "Vieira", "Barbosa", "Rocha", "Dias", "Nascimento", "Andrade", "Moreira", "Nunes", "Marques",
    "Machado", "Mendes", "Freitas", "Cardoso", "Ramos", "Gonçalves", "Santana", "Teixeira",
    "Araújo", "Conceição", "Magalhães", "Simões", "Brandão", "Assunção", "Guimarães", "Falcão",
    "Sá", "Lourenço", "Estêvão", "Damião", "Romão",
)  # fmt: skip
_PARTICLES = ("da", "de", "dos", "das", "do")
_DOMAINS = (
    ("gmail.com", 40), ("hotmail.com", 15), ("outlook.com", 10), ("yahoo.com.br", 10),
    ("uol.com.br", 8), ("bol.com.br", 5), ("terra.com.br", 4), ("icloud.com", 4), ("live.com", 4),
)  # fmt: skip
# state -> (weight, phone area code, cities)
_STATES: dict[str, tuple[int, str, tuple[str, ...]]] = {
    "SP": (30, "11", ("São Paulo", "Campinas", "Santos", "Ribeirão Preto", "São José dos Campos", "Osasco")),
    "RJ": (14, "21", ("Rio de Janeiro", "Niterói", "Petrópolis", "Duque de Caxias", "Nova Iguaçu")),
    "MG": (11, "31", ("Belo Horizonte", "Uberlândia", "Juiz de Fora", "Contagem", "Montes Claros")),
    "RS": (7, "51", ("Porto Alegre", "Caxias do Sul", "Pelotas", "Santa Maria")),
    "BA": (7, "71", ("Salvador", "Feira de Santana", "Vitória da Conquista", "Ilhéus")),
    "PR": (7, "41", ("Curitiba", "Londrina", "Maringá", "Foz do Iguaçu")),
    "SC": (5, "48", ("Florianópolis", "Joinville", "Blumenau", "Chapecó")),
    "PE": (5, "81", ("Recife", "Olinda", "Caruaru", "Jaboatão dos Guararapes")),
    "CE": (4, "85", ("Fortaleza", "Juazeiro do Norte", "Sobral")),
    "DF": (3, "61", ("Brasília",)),
    "GO": (3, "62", ("Goiânia", "Anápolis")),
    "PA": (2, "91", ("Belém", "Santarém")),
    "AM": (2, "92", ("Manaus",)),
}
_COMPANIES = (
    "Padaria Pão Dourado", "Açougue São Jorge", "Construtora Horizonte Ltda", "Café Três Corações",
    "Clínica Bem-Estar", "Ótica Visão Clara", "Escola Saber Mais", "Mercado Econômico",
    "Agência Criativa Digital", "Transportadora Rápida", "Farmácia Popular do Bairro",
    "Tech Soluções S.A.", "Academia Corpo em Forma", "Livraria Páginas", "Pousada Maré Alta",
)  # fmt: skip
_COMPANY_PATTERNS = ("{} & Filhos", "{} Consultoria", "Grupo {}", "{} Advogados Associados")
_TAGS = ("vip", "hot", "customer", "newsletter", "webinar")
_FUNNELS = (("webinar-2026", 30), ("ebook-seo", 25), ("trial", 20), (None, 25))
_CAPTURE_WINDOW_S = 120 * 24 * 3600

# Precomputed once: weighted choices and ASCII forms of names keep 1 M rows well under a minute.
_STATE_CODES = tuple(_STATES)
_STATE_WEIGHTS = tuple(w for w, _, _ in _STATES.values())
_DOMAIN_NAMES = tuple(d for d, _ in _DOMAINS)
_DOMAIN_WEIGHTS = tuple(w for _, w in _DOMAINS)
_FUNNEL_NAMES = tuple(f for f, _ in _FUNNELS)
_FUNNEL_WEIGHTS = tuple(w for _, w in _FUNNELS)


def _ascii(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return folded.lower().replace(" ", "")


_ASCII = {name: _ascii(name) for name in (*_FIRST_NAMES, *_SURNAMES)}


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def generate_leads(
    n: int, *, seed: int = 7, start_id: int = 1, now: datetime | None = None
) -> Iterator[dict[str, Any]]:
    """Yield ``n`` synthetic leads as flat dicts ready for a CSV or JSON Lines file.

    Values are text (``tags`` as ``"a;b"``, dates ISO) or ``None`` for a missing field, plus
    ``id`` and ``score`` as ints. Leads ``start_id .. start_id + n - 1``.

    :param n: how many leads.
    :param seed: random seed; the same seed, ``start_id`` and ``now`` give the same leads.
    :param start_id: id of the first lead (emails embed the id, so ranges never collide).
    :param now: reference time for ``captured_at`` (the 120 days before it) and "birthday today";
        default: the current time.
    """
    rng = random.Random(seed * 1_000_003 + start_id)
    now = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    today = now.date()
    random_ = rng.random
    randint = rng.randint
    choice = rng.choice
    choices = rng.choices
    for lead_id in range(start_id, start_id + n):
        first = choice(_FIRST_NAMES)
        last = choice(_SURNAMES)
        roll = random_()
        if roll < 0.25:
            name = f"{first} {choice(_PARTICLES)} {choice(_SURNAMES)} {last}"
        elif roll < 0.55:
            name = f"{first} {choice(_SURNAMES)} {last}"
        else:
            name = f"{first} {last}"
        ascii_first, ascii_last = _ASCII[first], _ASCII[last]
        style = lead_id % 4
        if style == 0:
            local = f"{ascii_first}.{ascii_last}{lead_id}"
        elif style == 1:
            local = f"{ascii_first}{ascii_last}{lead_id}"
        elif style == 2:
            local = f"{ascii_first[0]}.{ascii_last}{lead_id}"
        else:
            local = f"{ascii_first}_{ascii_last}{lead_id}"
        email = f"{local}@{choices(_DOMAIN_NAMES, _DOMAIN_WEIGHTS)[0]}"

        state_code = choices(_STATE_CODES, _STATE_WEIGHTS)[0]
        _, area, cities = _STATES[state_code]
        state: str | None = state_code
        city = choice(cities) if random_() >= 0.2 else None
        phone = f"+55 {area} 9{randint(1000, 9999)}-{randint(1000, 9999)}" if random_() >= 0.2 else None
        if random_() < 0.05:
            state = None  # some forms do not ask for the state

        if random_() >= 0.2:
            company = choice(_COMPANIES) if random_() < 0.6 else choice(_COMPANY_PATTERNS).format(last)
        else:
            company = None

        birth_date = _birth_date(rng, lead_id, today)

        tags = [tag for tag in _TAGS if random_() < 0.18]
        if random_() < 0.05:
            tags.append("unsubscribed")
        captured_at = now - timedelta(seconds=randint(0, _CAPTURE_WINDOW_S))
        yield {
            "id": lead_id,
            "email": email,
            "name": name,
            "birth_date": birth_date,
            "phone": phone,
            "company": company,
            "city": city,
            "state": state,
            "score": min(100, int(rng.triangular(0, 101, 20))),
            "status": "inactive" if random_() < 0.05 else "active",
            "funnel": choices(_FUNNEL_NAMES, _FUNNEL_WEIGHTS)[0],
            "tags": ";".join(tags) or None,
            "captured_at": captured_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


def _birth_date(rng: random.Random, lead_id: int, today: date) -> str | None:
    roll = rng.random()
    year = today.year - rng.randint(18, 70)
    if lead_id % 500 == 250:
        # Leap-day birthdays: the filter must still find them on 28 Feb of common years.
        while not _is_leap(year):
            year -= 1
        return f"{year:04d}-02-29"
    if roll < 0.2:
        return None
    if roll < 0.215:
        # Birthday today, for birthday_today demos; 29 Feb today needs a leap birth year.
        if today.month == 2 and today.day == 29:
            while not _is_leap(year):
                year -= 1
        return f"{year:04d}-{today.month:02d}-{today.day:02d}"
    return f"{year:04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def write_leads(
    path: str | PathLike[str],
    n: int,
    *,
    seed: int = 7,
    fmt: Literal["csv", "jsonl"] = "csv",
    start_id: int = 1,
    now: datetime | None = None,
) -> int:
    """Stream ``n`` generated leads to a ``.csv`` or ``.jsonl`` file that ``leads import`` reads.

    :param path: the file to write (replaced).
    :param n: how many leads.
    :param seed: random seed (see :func:`generate_leads`).
    :param fmt: ``csv`` (header row, ``tags`` as ``a;b``) or ``jsonl`` (one object a line, ``tags``
        as a list, missing fields left out).
    :param start_id: id of the first lead.
    :param now: reference time (see :func:`generate_leads`).
    :return: the number of leads written.
    """
    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"unknown format {fmt!r}; use 'csv' or 'jsonl'")
    leads = generate_leads(n, seed=seed, start_id=start_id, now=now)
    written = 0
    with Path(path).open("w", encoding="utf-8", newline="") as fh:
        if fmt == "csv":
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(GENERATED_COLUMNS)
            for lead in leads:
                writer.writerow(["" if lead[c] is None else lead[c] for c in GENERATED_COLUMNS])
                written += 1
        else:
            for lead in leads:
                obj = {k: v for k, v in lead.items() if v is not None}
                if "tags" in obj:
                    obj["tags"] = obj["tags"].split(";")
                fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
                written += 1
    return written
