"""The verification page (RFC 8628 3.3): plain HTML, no scripts, no external assets.

Every value that reaches the page goes through :func:`html.escape`.
"""

from __future__ import annotations

from html import escape

__all__ = ["CONTENT_SECURITY_POLICY", "confirm_page", "entry_page", "result_page"]

#: No scripts, no external assets, forms only back to this server, never framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)

_STYLE = """
body { font: 1.05rem/1.5 system-ui, sans-serif; max-width: 32rem; margin: 3rem auto;
       padding: 0 1rem; color: #111; background: #fff; }
h1 { font-size: 1.5rem; }
label { display: block; font-weight: 600; margin-bottom: .25rem; }
input { font: 1.4rem ui-monospace, monospace; letter-spacing: .15em; padding: .4rem;
        text-transform: uppercase; width: 12ch; }
button { font: inherit; padding: .5rem 1.2rem; margin: .75rem .5rem 0 0; cursor: pointer; }
.code { font: 2rem ui-monospace, monospace; letter-spacing: .2em; margin: .5rem 0 1rem; }
.error { color: #a00000; font-weight: 600; }
dl { display: grid; grid-template-columns: auto 1fr; gap: .25rem 1rem; }
dt { font-weight: 600; }
dd { margin: 0; }
"""


def _document(title: str, body: str) -> str:
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>{escape(title)} - deviceflow test server</title>\n"
        f"<style>{_STYLE}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def entry_page(*, action: str, value: str = "", message: str | None = None) -> str:
    """The form where the user types the code shown on the device."""
    error = ""
    described = ""
    if message:
        error = f'<p id="code-error" class="error" role="alert">{escape(message)}</p>\n'
        described = ' aria-describedby="code-error" aria-invalid="true"'
    body = (
        "<h1>Connect a device</h1>\n"
        f"{error}"
        f'<form method="get" action="{escape(action)}">\n'
        '<label for="user_code">Enter the code shown on your device</label>\n'
        f'<input id="user_code" name="user_code" value="{escape(value)}" required autofocus '
        'autocomplete="off" autocapitalize="characters" spellcheck="false" maxlength="64"'
        f"{described}>\n"
        '<button type="submit">Continue</button>\n'
        "</form>"
    )
    return _document("Connect a device", body)


def confirm_page(
    *, action: str, user_code: str, client_id: str, scope: str | None, csrf: str
) -> str:
    """The page that shows the code and asks the user to approve or deny the request."""
    scope_text = scope if scope else "(no scope requested)"
    body = (
        "<h1>Approve this device?</h1>\n"
        "<p>Check that this code is the one shown on your device. "
        "If it is not, deny the request: someone else may be trying to sign in as you.</p>\n"
        f'<p class="code" id="user-code" aria-label="Code {escape(" ".join(user_code))}">'
        f"{escape(user_code)}</p>\n"
        "<dl>\n"
        f"<dt>Application</dt><dd>{escape(client_id)}</dd>\n"
        f"<dt>Access requested</dt><dd>{escape(scope_text)}</dd>\n"
        "</dl>\n"
        f'<form method="post" action="{escape(action)}">\n'
        f'<input type="hidden" name="user_code" value="{escape(user_code)}">\n'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">\n'
        '<button type="submit" name="action" value="approve">Approve</button>\n'
        '<button type="submit" name="action" value="deny">Deny</button>\n'
        "</form>"
    )
    return _document("Approve this device?", body)


def result_page(*, title: str, text: str) -> str:
    """A page that tells the user what happened."""
    body = f'<h1>{escape(title)}</h1>\n<p role="status">{escape(text)}</p>'
    return _document(title, body)
