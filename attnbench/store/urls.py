"""Storage URLs as text: hide their secrets, say where they point, quote their userinfo for every parser alike."""
from __future__ import annotations

import re
from urllib.parse import quote, unquote, urlsplit

import optuna

JOURNAL_PREFIX = "journal:"

_SCHEME = re.compile(r"[A-Za-z][\w+.-]*://")
# the host part after a URL's userinfo (a name or address, an optional port), then a path (strong evidence)
# or the end of the URL (weaker: a password with a space could be mistaken for it, so a path wins)
_HOST = r"@(?:\[[^\]\s]*\]|[\w.%-]+)(?::[^/?#\s@]*)?"
_USERINFO_ENDS = (re.compile(_HOST + r"(?=[/?#])"), re.compile(_HOST + r"(?=[\s,;'\")]|$)"))
_QUERY_SECRET = re.compile(r"(?P<head>[?&;](?:password|passwd|pwd|secret|token|api_?key)=)[^&;\s]*", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with the whole userinfo of every URL (scheme://USER:PASSWORD@host) and secret query values as ***.

    The userinfo ends at the first `@` followed by a host (and port) and a path, or failing that the
    end of the URL: a password may hold raw `@`, `/`, `:` or spaces and is still hidden whole (at
    worst a little more than the userinfo is hidden).
    """
    pieces, position = [], 0
    for match in _SCHEME.finditer(text):
        if match.start() < position:
            continue  # inside a userinfo already hidden
        if text.startswith("/", match.end()):
            continue  # no authority (sqlite:///path)
        line_end = text.find("\n", match.end())
        at = _userinfo_end(text, match.end(), len(text) if line_end < 0 else line_end)
        if at is None:
            continue
        pieces += [text[position:match.end()], "***"]
        position = at
    pieces.append(text[position:])
    return _QUERY_SECRET.sub(r"\g<head>***", "".join(pieces))


def _userinfo_end(text: str, start: int, end: int) -> int | None:
    """Where the userinfo that begins at `start` (just after `scheme://`) ends: the index of its `@`, or None."""
    host = next((m for m in (p.search(text, start, end) for p in _USERINFO_ENDS) if m), None)
    return None if host is None else host.start()


def quoted_userinfo(url: str) -> str:
    """`url` with its user and password percent-encoded, so that every parser splits it where `redact` does.

    SQLAlchemy's URL parser ends a password at its first `@` and urlsplit ends the authority at
    the first `/`: a raw `@` or `/` in a password would otherwise make the rest of it the host
    name, which the driver then prints ("could not translate host name "ss@word@db""). Encoded
    parts are decoded first, so an already quoted URL stays as it is.
    """
    match = _SCHEME.match(url)
    if match is None or url.startswith("/", match.end()):
        return url
    at = _userinfo_end(url, match.end(), len(url))
    if at is None:
        return url
    user, colon, password = url[match.end():at].partition(":")
    userinfo = quote(unquote(user), safe="") + (colon + quote(unquote(password), safe="") if colon else "")
    return url[:match.end()] + userinfo + url[at:]


def where(url: str) -> str:
    """What using the store means, for an error line: 'opening results/x.db', 'connecting to db:5432'."""
    if url.startswith(JOURNAL_PREFIX):
        return f"using the journal file {url.removeprefix(JOURNAL_PREFIX)}"
    parts = urlsplit(quoted_userinfo(url))
    if parts.scheme.startswith("sqlite"):
        return f"opening {parts.path.removeprefix('/') or 'an in-memory database'}"
    return f"connecting to {parts.hostname or 'localhost'}:{parts.port or 5432}"


def reason(error: BaseException, url: str) -> str:
    """The driver's first line of explanation, never containing the password."""
    if isinstance(error, optuna.exceptions.StorageInternalError) and error.__cause__ is not None:
        error = error.__cause__  # Optuna's own words ("invalid data ... exceeding max length") mislead; the driver's tell
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    first = text[0] if text else type(error).__name__
    password = urlsplit(quoted_userinfo(url)).password
    for spelling in {unquote(password), password} if password else ():
        first = first.replace(spelling, "***")
    return redact(first)
