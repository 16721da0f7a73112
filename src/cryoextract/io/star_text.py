"""The text of STAR values: which values need quotes, which no STAR file can hold.

One grammar for writing and reading, RELION 3.1's (``nextTokenInSTAR``, checked against
``relion_star_handler`` and ``relion_stack_create``): values are separated by spaces or
tabs; a value that starts with ``"`` or ``'`` runs to the next same quote that is
followed by a space, a tab or the end of the line (so ``"it's"`` and ``'say "hi"'``
hold quotes); ``#`` at the start of a value starts a comment. Quoting is needed, and
used, for values that are empty, hold whitespace or ``#`` (``#`` anywhere: pandas, and
so ``starfile``, takes it for a comment), start with a quote, ``_``, ``;``, ``$``, ``[``
or ``]``, hold ``data_`` (RELION looks for a block name anywhere on a line) or start with
``loop_``, ``save_``, ``global_`` or ``stop_``. The quote is ``"`` when the value holds
none, else ``'`` when it holds none, else one that no space follows inside the value.

Refused (:func:`value_problem`): control characters (C0, DEL, C1; tab, newline and
carriage return among them) and the Unicode line and paragraph separators, which no STAR
line holds as they are (RELION drops some, turns tabs into spaces, and every reader ends
a line at a newline); a value with both ``" `` and ``' `` inside, which no quote can
hold. See docs/conventions.md, "Paths", for what each reader makes of the rest.
"""

from __future__ import annotations

import re

__all__ = ["NA_TOKENS", "NEEDS_QUOTES_RE2", "REFUSED_RE2", "label_problem", "needs_quotes",
           "split_row", "star_token", "value_problem"]

#: values that starfile (pandas) and our reader take for a missing value
NA_TOKENS = frozenset({"nan", "NaN", "<NA>"})
# Unicode space separators (Zs): with the refused characters, every str.isspace() char
_SPACES = " \xa0\u1680\u2000-\u200a\u202f\u205f\u3000"
_SPACES_RE2 = r" \x{a0}\x{1680}\x{2000}-\x{200a}\x{202f}\x{205f}\x{3000}"
_NEEDS = r"^$|^[\"'_;$\[\]]|[{spaces}#]|data_|^(?i:loop_|save_|global_|stop_)"
#: the values that need quotes, as an RE2 (Arrow) pattern; :func:`needs_quotes` in Python
NEEDS_QUOTES_RE2 = _NEEDS.format(spaces=_SPACES_RE2)
#: characters no STAR value may hold (RE2): C0, DEL, C1, line and paragraph separators
REFUSED_RE2 = r"[\x00-\x1f\x{7f}-\x{9f}\x{2028}\x{2029}]"
_NEEDS_QUOTES = re.compile(_NEEDS.format(spaces=_SPACES))
_REFUSED = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: a value of one data line, as RELION reads it (quoted, comment mark, bare)
_TOKEN = re.compile(r"""[ \t]*(?:"(.*?)"(?=[ \t]|$)|'(.*?)'(?=[ \t]|$)|(["'#])|([^ \t]+))""")
_NAMES = {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\x00": "NUL"}


def needs_quotes(text: str) -> bool:
    """True when ``text`` must be quoted to be read back as one value (module docstring)."""
    return _NEEDS_QUOTES.search(text) is not None


def value_problem(text: str) -> str | None:
    """Why ``text`` cannot be a STAR value, or ``None`` when it can.

    Returns
    -------
    str or None
        A phrase such as ``holds a control character (\\n)``.
    """
    bad = _REFUSED.search(text)
    if bad is not None:
        char = bad.group()
        shown = _NAMES.get(char, f"U+{ord(char):04X}")
        return f"holds a control character ({shown}), which no STAR line holds as it is"
    if needs_quotes(text) and _quote_char(text) is None:
        return "holds both '\" ' and \"' \", which no STAR quote can hold"
    return None


def star_token(text: str) -> str:
    """``text`` as it is written in a STAR file: as is, or quoted (module docstring).

    Raises
    ------
    ValueError
        ``text`` has a :func:`value_problem`.
    """
    problem = value_problem(text)
    if problem is not None:
        raise ValueError(problem)
    if not needs_quotes(text):
        return text
    quote = _quote_char(text)
    assert quote is not None
    return f"{quote}{text}{quote}"


def _quote_char(text: str) -> str | None:
    for quote in ('"', "'"):
        if quote not in text:
            return quote
    for quote in ('"', "'"):
        if f"{quote} " not in text and f"{quote}\t" not in text:
            return quote
    return None


def label_problem(label: str) -> str | None:
    """Why ``label`` cannot be a STAR column label (``_label``), or ``None``."""
    if not label:
        return "is empty"
    if any(c.isspace() for c in label) or _REFUSED.search(label):
        return "holds whitespace or a control character"
    if any(c in label for c in "#\"'"):
        return "holds '#' or a quote"
    return None


def split_row(line: str) -> list[str] | None:
    """The values of one loop row as RELION reads them; ``None`` for an unclosed quote.

    A value that starts with ``#`` ends the row (a comment).
    """
    values: list[str] = []
    for match in _TOKEN.finditer(line):
        double, single, mark, bare = match.groups()
        if bare is not None:
            values.append(bare)
        elif double is not None:
            values.append(double)
        elif single is not None:
            values.append(single)
        elif mark == "#":
            break
        else:
            return None
    return values
