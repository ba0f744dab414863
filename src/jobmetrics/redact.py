"""URLs with their secrets blanked, for log lines and error messages (a store's URL, a
Pushgateway address, with or without a scheme)."""

from __future__ import annotations

import re

__all__ = ["redact_url"]

# user:password@ in the authority; password= (or libpq's sslpassword=) as a query
# parameter or in a key=value conninfo string.
_USERINFO = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*://)?[^:/?#@]*):[^@/?#]*@")
_PARAM = re.compile(r"((?:^|[?&\s])(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|[^&\s]*)", re.I)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (never raises)."""
    text = _USERINFO.sub(r"\1:***@", str(url), count=1)
    return _PARAM.sub(r"\1***", text)
