"""Console sessions and CSRF protection.

A session is the same token an API login gets (idle timeout and revocation included), kept
in a cookie that scripts cannot read (HttpOnly), that goes only over HTTPS (Secure) and only
with requests from the console's own pages (SameSite=Strict). Every form and htmx request
that changes something also carries a CSRF token derived from the session, checked on the
server: a page of another site can neither read it nor guess it.

Before login there is no session, so the login form uses a double-submit token: a random
value in a cookie and in the form, which must match.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fastapi import Request
from fastapi.responses import Response

SESSION_COOKIE = "rk_session"
LOGIN_CSRF_COOKIE = "rk_login_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"


class CsrfError(Exception):
    """A state-changing request without the right CSRF token."""


def csrf_for(session_token: str) -> str:
    return hmac.new(session_token.encode(), b"rekindle console csrf", hashlib.sha256).hexdigest()


def new_login_csrf() -> str:
    return secrets.token_urlsafe(32)


def set_cookie(response: Response, name: str, value: str) -> None:
    response.set_cookie(name, value, httponly=True, secure=True, samesite="strict", path="/ui")


def clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path="/ui", secure=True, httponly=True, samesite="strict")


async def check_csrf(request: Request, expected: str) -> None:
    """The token may come as a form field (plain forms) or a header (htmx)."""
    got = request.headers.get(CSRF_HEADER)
    if got is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        got = value if isinstance(value, str) else None
    if not got or not hmac.compare_digest(got, expected):
        raise CsrfError("the form's security token is missing or stale: reload the page")
