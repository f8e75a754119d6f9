"""A job's files: checked at POST (every recipient's message fits Gmail, no file type Gmail
refuses, every filename renders), and gathered for one recipient's message at send.

A job stores, at job level and per recipient, a list of entries {"a": attachment row id,
"p": its public id, "f": filename (a template when it uses variables), "t": content type, "c": cid (inline image)
or null, "s": size}; `job_attachments` lists every attachment the job uses.
"""
from __future__ import annotations

import base64
import binascii
import mimetypes
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mailjobs.attachments.policy import (
    MESSAGE_MAX_BYTES,
    MESSAGE_OVERHEAD,
    PART_OVERHEAD,
    base64_size,
    blocked_in_zip,
    blocked_name,
    text_size,
)
from mailjobs.attachments.store import FileCache, MySQLStore
from mailjobs.dao_mysql import Dao
from mailjobs.enqueue import RequestRejected
from mailjobs.mail_message import MailFile, header_text_problem
from mailjobs.records import ApiKey, Attachment, Job, Recipient
from mailjobs.settings import Settings
from mailjobs.templating import (
    CompiledTemplates,
    TemplateCompileError,
    TemplateRenderError,
    compile_templates,
    recipient_context,
    render_limits,
    template_limits,
)
from mailjobs.web.schemas import AttachmentRefIn, SendTemplateEmailsIn, TemplateIn

MAX_LISTED_ERRORS = 20


class AttachmentUnavailable(Exception):
    """At send: a file the message needs is gone (deleted) or its name is refused."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _File:
    field: str
    filename: str
    content_type: str
    cid: str | None
    size: int
    attachment: Attachment | None = None   # uploaded
    data: bytes | None = None              # inline in the POST, stored at the end
    template: CompiledTemplates | None = None

    def stored(self) -> dict[str, Any]:
        assert self.attachment is not None
        return {"a": self.attachment.id, "p": self.attachment.public_id, "f": self.filename,
                "t": self.content_type, "c": self.cid, "s": self.size}


@dataclass
class Prepared:
    """What enqueue stores: the job's list, each request recipient's list (by position), and
    every attachment row id used."""
    job: list[dict[str, Any]] | None = None
    recipients: list[list[dict[str, Any]] | None] = field(default_factory=list)
    ids: tuple[int, ...] = ()


def _is_template(name: str) -> bool:
    return "{{" in name or "{%" in name or "{#" in name


def _content_type(ref: AttachmentRefIn, attachment: Attachment | None, filename: str) -> str:
    if ref.content_type:
        return ref.content_type.lower()
    if attachment is not None and attachment.content_type not in ("", "application/octet-stream"):
        return attachment.content_type
    guessed = mimetypes.guess_type(filename.replace("{", "").replace("}", ""))[0]
    return guessed or "application/octet-stream"


class _Checker:
    def __init__(self, dao: Dao, key: ApiKey, req: SendTemplateEmailsIn, settings: Settings
                 ) -> None:
        self.dao, self.key, self.req, self.settings = dao, key, req, settings
        self.errors: list[tuple[str | None, str]] = []
        self.first: RequestRejected | None = None
        self.inline_bytes = 0
        self.uploaded: dict[str, Attachment] = {}

    def fail(self, rejected: RequestRejected) -> None:
        if self.first is None:
            self.first = rejected
        if len(self.errors) < MAX_LISTED_ERRORS:
            self.errors.append((rejected.field, rejected.message))

    def file(self, path: str, ref: AttachmentRefIn) -> _File | None:
        """One entry of a list, resolved (no writes)."""
        attachment = data = None
        if ref.id is not None:
            attachment = self.uploaded.get(ref.id)
            if attachment is None:
                self.fail(RequestRejected(400, "unknown_attachment", f"no attachment {ref.id} "
                                          "for this API key (upload it with POST "
                                          "/api/attachments)", [(f"{path}.id", "unknown")]))
                return None
            size = attachment.size
            filename = ref.filename or attachment.filename or (
                "attachment" + (mimetypes.guess_extension(ref.content_type
                                                          or attachment.content_type) or ""))
        else:
            try:
                data = base64.b64decode(ref.content_base64 or "", validate=True)
            except (binascii.Error, ValueError):
                self.fail(RequestRejected(400, "validation_error", "not valid base64",
                                          [(f"{path}.content_base64", "not valid base64")]))
                return None
            size = len(data)
            self.inline_bytes += size
            if self.inline_bytes > self.settings.attachment_inline_max_bytes:
                limit = self.settings.attachment_inline_max_bytes
                self.fail(RequestRejected(413, "payload_too_large", f"the job's inline files "
                                          f"are more than ATTACHMENT_INLINE_MAX_BYTES ({limit}) "
                                          "bytes: upload big files with POST /api/attachments",
                                          [(f"{path}.content_base64", f"over {limit} bytes")]))
                return None
            inside = blocked_in_zip(data)
            if inside:
                self.fail(RequestRejected(400, "forbidden_file_type", f"Gmail refuses "
                                          f"archives holding {inside}",
                                          [(f"{path}.content_base64", "blocked file type")]))
                return None
            filename = ref.filename or "attachment"
        template = None
        if _is_template(filename):
            try:
                template = compile_templates(filename, None, None,
                                             template_limits(self.settings))
            except TemplateCompileError as exc:
                self.fail(RequestRejected(400, "template_error", f"does not compile: {exc}",
                                          [(f"{path}.filename", str(exc))]))
                return None
        else:
            ext = blocked_name(filename)
            if ext:
                self.fail(RequestRejected(400, "forbidden_file_type", f"Gmail refuses {ext} "
                                          "files (its list of blocked file types)",
                                          [(f"{path}.filename", f"{ext} is blocked")]))
                return None
        return _File(path, filename, _content_type(ref, attachment, filename),
                     ref.cid if ref.inline else None, size, attachment, data, template)

    def files(self, path: str, refs: Sequence[AttachmentRefIn] | None) -> list[_File]:
        out = []
        for j, ref in enumerate(refs or ()):
            resolved = self.file(f"{path}[{j}]", ref)
            if resolved is not None:
                out.append(resolved)
        return out

    def recipient(self, i: int, context: dict[str, Any], shared: list[_File],
                  own: list[_File], body: int) -> None:
        """Everything about one recipient's files: filenames render (variables present, no
        blocked type, no line break), and its message fits Gmail after base64."""
        total = body
        for f in [*shared, *own]:
            if f.template is not None:
                where = f.field if f in own else f"recipients[{i}] ({f.field})"
                try:
                    name = f.template.render(context, render_limits(self.settings))[0]
                except TemplateRenderError as exc:
                    self.fail(RequestRejected(400, "missing_variables", f"{where}: cannot be "
                                              f"rendered: {exc}", [(f"{f.field}.filename",
                                                                    str(exc))]))
                    continue
                ext = blocked_name(name)
                problem = header_text_problem(name)
                if ext or problem or not name.strip():
                    text = f"{where}: renders to {name!r}: " + (
                        f"Gmail refuses {ext} files" if ext else problem or "empty")
                    self.fail(RequestRejected(400, "forbidden_file_type", text,
                                              [(f"{f.field}.filename", text)]) if ext else
                              RequestRejected(400, "validation_error", text,
                                              [(f"{f.field}.filename", text)]))
                    continue
            total += base64_size(f.size) + PART_OVERHEAD
            if total > MESSAGE_MAX_BYTES:
                text = (f"with this file the message to recipients[{i}] is about {total:,} "
                        f"bytes after base64, more than Gmail's {MESSAGE_MAX_BYTES:,} (35 MB)")
                self.fail(RequestRejected(400, "message_too_large", text, [(f.field, text)]))
                return


def _body_size(template: TemplateIn) -> int:
    """The largest the message's own parts may be: the template's, or its biggest language
    variant's (a recipient may get any of them)."""
    parts = [template, *(template.variants or {}).values()]
    return MESSAGE_OVERHEAD + max(text_size(p.subject) + text_size(p.html) + text_size(p.text)
                                  for p in parts)


def needs_files(req: SendTemplateEmailsIn) -> bool:
    return bool(req.attachments) or any(r.attachments for r in req.recipients)


def prepare(dao: Dao, store: MySQLStore, key: ApiKey, req: SendTemplateEmailsIn,
            template: TemplateIn, settings: Settings) -> Prepared:
    """Check every file of the request (raises RequestRejected naming the field), then store
    the small files given inline; returns what the job and its recipients store."""
    if not needs_files(req):
        return Prepared(recipients=[None] * len(req.recipients))
    check = _Checker(dao, key, req, settings)
    public_ids = [ref.id for ref in req.attachments or () if ref.id] + [
        ref.id for r in req.recipients for ref in r.attachments or () if ref.id]
    check.uploaded = dao.attachments_of_key(key.id, public_ids)
    shared = check.files("attachments", req.attachments)
    own = [check.files(f"recipients[{i}].attachments", r.attachments)
           for i, r in enumerate(req.recipients)]
    body = _body_size(template)
    templated = any(f.template is not None for f in shared)
    for i, r in enumerate(req.recipients):
        if check.errors and len(check.errors) >= MAX_LISTED_ERRORS:
            break
        if not own[i] and not templated and i > 0:
            continue      # the same as recipient 0's check
        context = recipient_context(req.variables, r.email, r.name, r.variables)
        check.recipient(i, context, shared, own[i], body)
    if check.first is not None:
        first = check.first
        raise RequestRejected(first.status, first.code, f"{first.field}: {first.message}",
                              check.errors)
    for f in [*shared, *(f for files in own for f in files)]:
        if f.attachment is None and f.data is not None:
            f.attachment = store.store_bytes(key.id, f.data, f.content_type, f.filename)
            f.data = None
    ids = tuple(sorted({f.attachment.id for f in shared if f.attachment is not None} | {
        f.attachment.id for files in own for f in files if f.attachment is not None}))
    return Prepared(job=[f.stored() for f in shared] or None,
                    recipients=[[f.stored() for f in files] or None for files in own],
                    ids=ids)


class RecipientFiles:
    """The files of one recipient's message at send: the job's (cached per runner within
    ATTACHMENT_CACHE_BYTES) and its own (read for this message only)."""

    def __init__(self, dao: Dao, settings: Settings) -> None:
        self.dao = dao
        self.settings = settings
        self.cache = FileCache(settings.attachment_cache_bytes)
        self._job_lists: dict[int, list[dict[str, Any]]] = {}
        self._names: dict[str, CompiledTemplates] = {}

    def job_list(self, job: Job) -> list[dict[str, Any]]:
        if job.attachments is not None:   # read with the job (Dao.job: [] for none)
            return job.attachments
        found = self._job_lists.get(job.id)
        if found is None:
            found = self.dao.job_attachment_list(job.id)
            if len(self._job_lists) > 256:
                self._job_lists.clear()
            self._job_lists[job.id] = found
        return found

    def _read(self, attachment_id: int) -> bytes:
        data = self.dao.attachment_bytes(attachment_id)
        if not data and self.dao.attachment_row(attachment_id) is None:
            raise AttachmentUnavailable("attachment_missing", f"attachment {attachment_id} was "
                                        "deleted (ATTACHMENT_RETENTION_DAYS or DELETE) before "
                                        "this message was sent")
        return data

    def _filename(self, source: str, context: dict[str, Any]) -> str:
        if not _is_template(source):
            return source
        compiled = self._names.get(source)
        if compiled is None:
            compiled = compile_templates(source, None, None, template_limits(self.settings))
            if len(self._names) > 1024:
                self._names.clear()
            self._names[source] = compiled
        name = compiled.render(context, render_limits(self.settings))[0]
        ext = blocked_name(name)
        if ext:
            raise AttachmentUnavailable("forbidden_file_type", f"the filename renders to "
                                        f"{name!r}: Gmail refuses {ext} files")
        return name

    def files(self, job: Job, r: Recipient, context: dict[str, Any]) -> list[MailFile]:
        out = []
        shared = self.job_list(job)
        for entry, load in [*((e, self._shared) for e in shared),
                            *((e, self._read) for e in r.attachments or ())]:
            data = load(int(entry["a"]))
            out.append(MailFile(self._filename(entry["f"], context), entry["t"], data,
                                entry.get("c")))
        return out

    def _shared(self, attachment_id: int) -> bytes:
        return self.cache.get(attachment_id, lambda: self._read(attachment_id))


FilesFor = Callable[[Job, Recipient, dict[str, Any]], list[MailFile]]
