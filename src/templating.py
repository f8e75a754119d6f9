"""Compiling a job's templates once, and what variables they need.

Jinja2's `SandboxedEnvironment` (templates come from API clients) with `StrictUndefined` (a
missing variable is an error, never an empty string in somebody's mail). HTML is autoescaped;
the subject and the text part are not. The API uses `required_variables` to refuse, before
anything is stored, a job whose recipients do not provide every variable.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, meta
from jinja2.sandbox import SandboxedEnvironment

# Variables every recipient has without providing them. `unsubscribe_url` (the recipient's
# one-click unsubscribe link) exists only in jobs with unsubscribe on; elsewhere it is an ordinary
# variable the request must provide (enqueue refuses it otherwise).
BUILTIN_VARIABLES = frozenset({"email", "name", "unsubscribe_url"})

_plain = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
_html = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True, keep_trailing_newline=True)


class TemplateCompileError(ValueError):
    def __init__(self, part: str, message: str) -> None:
        super().__init__(message)
        self.part = part


@dataclass
class CompiledTemplates:
    subject: Any
    html: Any | None
    text: Any | None
    required: frozenset[str]

    def render(self, context: dict[str, Any]) -> tuple[str, str | None, str | None]:
        return (self.subject.render(context),
                self.html.render(context) if self.html is not None else None,
                self.text.render(context) if self.text is not None else None)


def _parse(env: SandboxedEnvironment, part: str, source: str) -> tuple[Any, set[str]]:
    try:
        ast = env.parse(source)
        return env.from_string(source), set(meta.find_undeclared_variables(ast))
    except TemplateSyntaxError as exc:
        raise TemplateCompileError(part, f"line {exc.lineno}: {exc.message}") from None


def compile_templates(subject: str, html: str | None, text: str | None) -> CompiledTemplates:
    subject_t, needed = _parse(_plain, "subject", subject)
    html_t = text_t = None
    if html is not None:
        html_t, more = _parse(_html, "html", html)
        needed |= more
    if text is not None:
        text_t, more = _parse(_plain, "text", text)
        needed |= more
    return CompiledTemplates(subject_t, html_t, text_t, frozenset(needed))


def recipient_context(job_variables: dict[str, Any], email: str, name: str | None,
                      variables: dict[str, Any] | None) -> dict[str, Any]:
    """Job-wide variables are defaults; `email`/`name` come next; the recipient's own win."""
    context = dict(job_variables)
    context["email"] = email
    if name is not None:
        context["name"] = name
    if variables:
        context.update(variables)
    return context
