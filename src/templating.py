"""Compiling a job's templates once, what variables they need, and rendering them on a budget.

Jinja2's `SandboxedEnvironment` (templates come from API clients) with `StrictUndefined` (a
missing variable is an error, never an empty string in somebody's mail). HTML is autoescaped;
the subject and the text part are not. The API uses `required_variables` to refuse, before
anything is stored, a job whose recipients do not provide every variable.

Templates are a tenant's code running in our process, so their cost is bounded where it is paid:

- **Compile** (at POST and once per job in a runner): the source is lexed as a stream and
  refused past `max_nodes` tokens before any tree is built; the tree is walked iteratively and
  refused past `max_depth` levels or `max_nodes` nodes; nothing is evaluated at compile time
  (Jinja2 folds constant expressions while compiling, so `"x" * 10**8` or `9**(9**7)` would be
  computed inside the POST): the optimizer is off and output is never folded.
- **Render** (per recipient): a `RenderBudget` of time and characters, checked at every call,
  filter, operator, loop pass and output; string repetition, `%`/`format` widths and padding
  filters are checked before they allocate; `range` is capped at `MAX_RANGE`. Any exception a
  render raises is a `TemplateRenderError` (the recipient's `template_error`).
"""
from __future__ import annotations

import functools
import re
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeGuard

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, meta, nodes
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from mailjobs import defaults

# Variables every recipient has without providing them. `unsubscribe_url` (the recipient's
# one-click unsubscribe link) exists only in jobs with unsubscribe on; elsewhere it is an ordinary
# variable the request must provide (enqueue refuses it otherwise).
BUILTIN_VARIABLES = frozenset({"email", "name", "unsubscribe_url"})
# Largest `range(...)` a template may build (Jinja2's own cap is 100,000).
MAX_RANGE = 10_000
# Largest integer a template may compute, in bits (a 4300-digit number is ~14,300 bits).
MAX_INT_BITS = 20_000
# A render running longer than YIELD_AFTER seconds sleeps YIELD_FOR seconds (GIL fairness).
YIELD_AFTER = 0.002
YIELD_FOR = 0.002
# What one output value costs besides its characters (a Python string object and its slot).
OBJECT_COST = 64
# Text a render may produce in all, intermediate values included, per byte of RENDER_MAX_BYTES.
WORK_FACTOR = 2


class TemplateCompileError(ValueError):
    def __init__(self, part: str, message: str) -> None:
        super().__init__(message)
        self.part = part


class RenderBudgetExceeded(SecurityError):
    """A render went over its time or size budget (RENDER_TIMEOUT, RENDER_MAX_BYTES)."""


class TemplateRenderError(Exception):
    """Rendering one part failed for this recipient's values; the message says how."""

    def __init__(self, part: str, exc: BaseException) -> None:
        super().__init__(f"{part}: {type(exc).__name__}: {exc}")
        self.part = part
        self.cause = exc


@dataclass(frozen=True)
class TemplateLimits:
    """What a template may cost to compile (checked at POST and again in the runner)."""
    max_nodes: int = defaults.TEMPLATE_MAX_NODES
    max_depth: int = defaults.TEMPLATE_MAX_DEPTH
    render_max_bytes: int = defaults.RENDER_MAX_BYTES   # what a constant expression may make


@dataclass(frozen=True)
class RenderLimits:
    """What one recipient's render may cost."""
    timeout: float = defaults.RENDER_TIMEOUT
    max_bytes: int = defaults.RENDER_MAX_BYTES


class RenderBudget:
    """Time and characters left to one render; every hook of the environment checks it."""

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.timeout
        self.left = WORK_FACTOR * limits.max_bytes
        self._ran_since = time.monotonic()

    def tick(self) -> None:
        now = time.monotonic()
        if now > self.deadline:
            raise RenderBudgetExceeded(
                f"rendering took longer than RENDER_TIMEOUT ({self.limits.timeout:g} s)")
        if now - self._ran_since > YIELD_AFTER:
            # A long render gives the GIL away for a moment: without it, a few renders that
            # spin for their whole RENDER_TIMEOUT starve the other sending threads' I/O.
            time.sleep(YIELD_FOR)
            self._ran_since = time.monotonic()

    def need(self, size: int, what: str) -> None:
        """Refuse, before allocating, what would produce `size` characters over the budget."""
        if size > self.left:
            raise RenderBudgetExceeded(
                f"{what} would go over the render budget (RENDER_MAX_BYTES "
                f"{self.limits.max_bytes} bytes of output, twice that while rendering): "
                f"{size} characters wanted, {max(0, self.left)} left")
        self.tick()

    def charge(self, size: int, what: str = "the template") -> None:
        self.need(size, what)
        self.left -= size


def template_limits(settings: Any) -> TemplateLimits:
    return TemplateLimits(settings.template_max_nodes, settings.template_max_depth,
                          settings.render_max_bytes)


def render_limits(settings: Any) -> RenderLimits:
    return RenderLimits(settings.render_timeout, settings.render_max_bytes)


_local = threading.local()
_UNLIMITED = RenderLimits(timeout=3600.0, max_bytes=2**40)


def _budget() -> RenderBudget:
    budget = getattr(_local, "budget", None)
    if budget is None:   # a render outside CompiledTemplates.render (never in mailjobs)
        budget = _local.budget = RenderBudget(_UNLIMITED)
    return budget


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple, dict)) else 0


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# --- format strings: widths and precisions are allocations ----------------------------------
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_percent(budget: RenderBudget, fmt: str) -> None:
    for width, precision in _PERCENT_SPEC.findall(fmt):
        for number in (width, precision):
            if number == "*":
                raise RenderBudgetExceeded("'*' widths in % formats are not allowed in templates")
            if number:
                budget.need(int(number), f"a % format width of {number}")


def _check_brace_format(budget: RenderBudget, fmt: str) -> None:
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return   # str.format raises the same error itself
    for _literal, _name, spec, _conversion in fields:
        if not spec:
            continue
        if "{" in spec:
            raise RenderBudgetExceeded("nested {} in a format spec is not allowed in templates")
        for number in re.findall(r"\d+", spec):
            budget.need(int(number), f"a format width of {number}")


# --- string methods and filters that allocate from a number ---------------------------------
def _check_str_method(budget: RenderBudget, s: str, name: str, args: tuple[Any, ...],
                      kwargs: dict[str, Any]) -> None:
    first = args[0] if args else None
    if name in ("center", "ljust", "rjust", "zfill"):
        budget.need(_int(first if first is not None else kwargs.get("width")), f"str.{name}")
    elif name == "expandtabs":
        tab = _int(first if first is not None else kwargs.get("tabsize", 8))
        budget.need(len(s) + s.count("\t") * tab, "str.expandtabs")
    elif name == "replace" and len(args) >= 2:
        _check_replace(budget, s, args[0], args[1])


def _check_replace(budget: RenderBudget, s: Any, old: Any, new: Any) -> None:
    if isinstance(s, str) and isinstance(old, str) and isinstance(new, str):
        count = len(s) + 1 if old == "" else s.count(old)
        budget.need(len(s) + count * max(0, len(new) - len(old)), "replace")


def _filter_precheck(budget: RenderBudget, name: str, value: Any, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> None:
    def arg(i: int, key: str) -> Any:
        return args[i] if len(args) > i else kwargs.get(key)

    if name == "center":
        budget.need(_int(arg(0, "width")), "the center filter")
    elif name == "indent":
        width = arg(0, "width")
        width = len(width) if isinstance(width, str) else _int(width)
        text = str(value)
        budget.need(len(text) + (text.count("\n") + 1) * width, "the indent filter")
    elif name == "batch":
        budget.need(_int(arg(0, "linecount")), "the batch filter")
    elif name == "slice":
        budget.need(_int(arg(0, "slices")), "the slice filter")
    elif name == "format" and isinstance(value, str):
        _check_percent(budget, value)
    elif name == "replace":
        _check_replace(budget, value, arg(0, "old"), arg(1, "new"))


def _budgeted_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    offset = 1 if hasattr(func, "jinja_pass_arg") else 0   # eval_ctx / environment first

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.tick()
        if len(args) > offset:
            _filter_precheck(budget, name, args[offset], args[offset + 1:], kwargs)
        result = func(*args, **kwargs)
        budget.charge(_size(result), f"the {name} filter")
        return result
    return run


def _budget_range(*args: int) -> range:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise RenderBudgetExceeded(f"range() of {len(rng)} items: at most {MAX_RANGE} in a "
                                   "template")
    return rng


def _tick(value: Any, static_chars: int) -> Any:
    """Run at the start of every loop pass and macro call: time, and the static text the
    pass writes."""
    _budget().charge(static_chars, "the template's text")
    return value


def _out(value: Any) -> Any:
    """Every value a template outputs (into the message or a {% set %} block) is charged."""
    size = len(value) if isinstance(value, str) else len(str(value))
    _budget().charge(size + OBJECT_COST, "the output")
    return value


def _sized(value: Any) -> Any:
    """A `~` concatenation: charged, so doubling a string in a loop ends at the budget."""
    _budget().charge(_size(value), "a ~ concatenation")
    return value


class _NoFoldingCodeGenerator(CodeGenerator):
    """Output is never evaluated at compile time, except literal text and constants."""

    def _output_child_to_const(self, node: nodes.Expr, frame: Any, finalize: Any) -> str:
        if not isinstance(node, (nodes.TemplateData, nodes.Const)):
            raise nodes.Impossible()
        return super()._output_child_to_const(node, frame, finalize)


class BudgetedEnvironment(SandboxedEnvironment):
    """The sandbox, with no compile-time evaluation and every costly operation budgeted."""

    code_generator_class = _NoFoldingCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})   # never folded, checked at run time

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(optimized=False, undefined=StrictUndefined, keep_trailing_newline=True,
                         **kwargs)
        self.globals.pop("lipsum", None)    # text of any size from one call
        self.globals["range"] = _budget_range
        self.filters = {name: _budgeted_filter(name, f) for name, f in self.filters.items()}
        self.filters.update({"_mj_tick": _tick, "_mj_out": _out, "_mj_sized": _sized})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        budget.tick()
        if operator == "*":
            if isinstance(left, int) and isinstance(right, (str, list, tuple)):
                left, right = right, left
            if isinstance(left, (str, list, tuple)) and isinstance(right, int):
                budget.charge(len(left) * max(0, right), "a * repetition")
            elif isinstance(left, int) and isinstance(right, int) and \
                    left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise RenderBudgetExceeded(f"a number over {MAX_INT_BITS} bits")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and \
                right > 0 and max(1, left.bit_length()) * right > MAX_INT_BITS:
            raise RenderBudgetExceeded(f"a number over {MAX_INT_BITS} bits ({left} ** {right})")
        elif operator == "+" and isinstance(left, (str, list, tuple)) and \
                isinstance(right, (str, list, tuple)):
            budget.charge(len(left) + len(right), "a + concatenation")
        elif operator == "%" and isinstance(left, str):
            _check_percent(budget, left)
        result = super().call_binop(context, operator, left, right)
        if operator == "%":
            budget.charge(_size(result), "a % format")
        return result

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        budget = _budget()
        budget.tick()
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            _check_str_method(budget, owner, getattr(__obj, "__name__", ""), args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        budget.charge(_size(result), getattr(__obj, "__name__", "a call"))
        return result

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None
        fmt = value.__self__

        @functools.wraps(wrapper)
        def checked(*args: Any, **kwargs: Any) -> str:
            budget = _budget()
            _check_brace_format(budget, fmt)
            result = wrapper(*args, **kwargs)
            budget.charge(len(result), "str.format")
            return result
        return checked


_plain = BudgetedEnvironment(autoescape=False)
_html = BudgetedEnvironment(autoescape=True)


# --- compile-time checks: bounded time and memory -------------------------------------------
TOKENS_PER_NODE = 4   # "{{ a }}" is 3 tokens and 3 nodes (output, name, text around it)
# bodies that run any number of times
_BODIES: tuple[type[nodes.For | nodes.Macro | nodes.CallBlock], ...] = (
    nodes.For, nodes.Macro, nodes.CallBlock)


def _count_tokens(env: SandboxedEnvironment, source: str, max_nodes: int) -> None:
    """Refuse, before any tree is built, a source with far more tokens than nodes allowed."""
    n, limit = 0, TOKENS_PER_NODE * max_nodes
    for _lineno, token, _value in env.lexer.tokeniter(source, None):
        if token != "whitespace":
            n += 1
            if n > limit:
                raise ValueError(f"more than {limit} tokens: a template part may have at most "
                                 f"{max_nodes} elements (TEMPLATE_MAX_NODES)")


def _check_tree(ast: nodes.Template, limits: TemplateLimits) -> int:
    """Refuse a tree over TEMPLATE_MAX_NODES or TEMPLATE_MAX_DEPTH; returns its node count."""
    stack: list[tuple[nodes.Node, int]] = [(ast, 1)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > limits.max_nodes:
            raise ValueError(f"more than {limits.max_nodes} elements (TEMPLATE_MAX_NODES)")
        if depth > limits.max_depth:
            raise ValueError(f"nested more than {limits.max_depth} levels deep "
                             f"(TEMPLATE_MAX_DEPTH), line {node.lineno}")
        if isinstance(node, (nodes.EvalContextModifier, nodes.ScopedEvalContextModifier)) and \
                not all(isinstance(k.value, nodes.Const) for k in node.options):
            raise ValueError(f"line {node.lineno}: autoescape takes true or false, not an "
                             "expression")
        stack.extend((child, depth + 1) for child in node.iter_child_nodes())
    return count


_FOLDABLE: dict[type[nodes.BinExpr], str] = {
    nodes.Mul: "*", nodes.Pow: "**", nodes.Add: "+", nodes.Mod: "%", nodes.Sub: "-",
    nodes.Div: "/", nodes.FloorDiv: "//"}


class _Sized:
    """A constant string or list known only by its length: never built at compile time."""
    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n


def _length(value: Any) -> int | None:
    if isinstance(value, _Sized):
        return value.n
    return len(value) if isinstance(value, (str, list, tuple)) else None


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _fold(budget: RenderBudget, op: str, left: Any, right: Any) -> Any:
    """What a constant binary expression would be, with the render's checks (raises
    RenderBudgetExceeded); strings and lists as _Sized; None when not worth knowing."""
    if op == "*" and _is_int(left) and _length(right) is not None:
        left, right = right, left
    left_n, right_n = _length(left), _length(right)
    if op == "*" and left_n is not None and _is_int(right):
        budget.charge(left_n * max(0, right), "a * repetition")
        return _Sized(left_n * max(0, right))
    if op == "+" and left_n is not None and right_n is not None:
        budget.charge(left_n + right_n, "a + concatenation")
        return _Sized(left_n + right_n)
    if op == "%" and isinstance(left, str):
        _check_percent(budget, left)
        return None
    if isinstance(left, (int, float)) and isinstance(right, (int, float)):
        if _is_int(left) and _is_int(right):
            if op == "*" and left.bit_length() + right.bit_length() > MAX_INT_BITS or \
                    op == "**" and right > 0 and max(1, left.bit_length()) * right > MAX_INT_BITS:
                raise RenderBudgetExceeded(f"a number over {MAX_INT_BITS} bits "
                                           f"({left} {op} {right})")
        try:
            return SandboxedEnvironment.default_binop_table[op](left, right)
        except (ArithmeticError, ValueError, TypeError):
            return None   # 1 // 0: left for the render to report
    return None


def _check_constants(ast: nodes.Template, limits: TemplateLimits) -> None:
    """Refuse a constant expression (`"x" * 10**8`, `9**(9**7)`) that every render would find
    over budget. Worked out bottom-up with the render's own checks, strings by their length
    only, in bounded time and memory; nothing is folded into the code."""
    order: list[nodes.Node] = []
    stack: list[nodes.Node] = [ast]
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.iter_child_nodes())
    known: dict[int, Any] = {}
    budget = RenderBudget(RenderLimits(timeout=1.0, max_bytes=limits.render_max_bytes))
    for node in reversed(order):   # children before their parents
        if isinstance(node, nodes.Const):
            known[id(node)] = node.value
        elif isinstance(node, (nodes.List, nodes.Tuple)) and \
                all(id(item) in known for item in node.items):
            known[id(node)] = _Sized(len(node.items))
        elif isinstance(node, nodes.BinExpr) and type(node) in _FOLDABLE and \
                known.get(id(node.left)) is not None and \
                known.get(id(node.right)) is not None:
            try:
                value = _fold(budget, _FOLDABLE[type(node)], known[id(node.left)],
                              known[id(node.right)])
            except RenderBudgetExceeded as exc:
                raise ValueError(f"line {node.lineno}: {exc}") from None
            if value is not None:
                known[id(node)] = value


def _static_chars(body: list[nodes.Node]) -> int:
    """Literal text written by one pass of `body` (nested loops and macros count their own)."""
    total, stack = 0, list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, nodes.TemplateData):
            total += len(node.data)
        elif not isinstance(node, _BODIES):
            stack.extend(node.iter_child_nodes())
    return total


def _filter(node: nodes.Expr, name: str, *args: Any) -> nodes.Filter:
    return nodes.Filter(node, name, [nodes.Const(a) for a in args], [], None, None,
                        lineno=node.lineno)


def _instrument(ast: nodes.Template) -> None:
    """Budget hooks into the tree: a tick at the start of every loop pass and macro body, and
    every output and `~` concatenation charged."""
    for node in [ast, *ast.find_all(_BODIES)]:
        # a statement, not an output: a pass of an empty loop must not grow the output list
        tick = _filter(nodes.Const(""), "_mj_tick", _static_chars(node.body))
        node.body.insert(0, nodes.ExprStmt(tick, lineno=node.lineno))
    for output in ast.find_all(nodes.Output):
        output.nodes = [child if isinstance(child, nodes.TemplateData)
                        else _filter(child, "_mj_out") for child in output.nodes]
    for parent in list(ast.find_all(nodes.Node)):
        for field in parent.fields:
            value = getattr(parent, field, None)
            if isinstance(value, nodes.Concat):
                setattr(parent, field, _filter(value, "_mj_sized"))
            elif isinstance(value, list):
                setattr(parent, field, [_filter(v, "_mj_sized") if isinstance(v, nodes.Concat)
                                        else v for v in value])


class _Tracking(meta.TrackingCodeGenerator, _NoFoldingCodeGenerator):
    """meta.find_undeclared_variables, without its optimizer (which folds constants)."""

    def __init__(self, environment: Any) -> None:
        CodeGenerator.__init__(self, environment, "<introspection>", "<introspection>",
                               optimized=False)
        self.undeclared_identifiers: set[str] = set()


def _undeclared(env: SandboxedEnvironment, ast: nodes.Template) -> set[str]:
    tracker = _Tracking(env)
    tracker.visit(ast)
    return tracker.undeclared_identifiers


def _parse(env: SandboxedEnvironment, part: str, source: str,
           limits: TemplateLimits) -> tuple[Template, set[str], int]:
    try:
        _count_tokens(env, source, limits.max_nodes)
        ast = env.parse(source)
        count = _check_tree(ast, limits)
        _check_constants(ast, limits)
        needed = _undeclared(env, ast)
        _instrument(ast)
        return env.from_string(ast), needed, count
    except TemplateSyntaxError as exc:
        raise TemplateCompileError(part, f"line {exc.lineno}: {exc.message}") from None
    except RecursionError:
        raise TemplateCompileError(part, "nested too deeply (TEMPLATE_MAX_DEPTH "
                                   f"{limits.max_depth})") from None
    except (ValueError, SyntaxError, MemoryError, OverflowError) as exc:
        # ValueError: our limits, and Python's own (an integer literal over 4300 digits)
        raise TemplateCompileError(part, str(exc) or type(exc).__name__) from None


@dataclass
class CompiledTemplates:
    subject: Template
    html: Template | None
    text: Template | None
    required: frozenset[str]
    subject_required: frozenset[str] = frozenset()
    nodes: int = 0   # elements of the three parts together (TEMPLATE_MAX_TOTAL_NODES)

    def render(self, context: dict[str, Any], limits: RenderLimits = RenderLimits()
               ) -> tuple[str, str | None, str | None]:
        """Render the three parts within one budget; raises TemplateRenderError."""
        _local.budget = RenderBudget(limits)
        try:
            subject = _render_part("subject", self.subject, context)
            html = None if self.html is None else _render_part("html", self.html, context)
            text = None if self.text is None else _render_part("text", self.text, context)
            size = sum(len(p.encode("utf-8", "surrogatepass"))
                       for p in (subject, html, text) if p is not None)
            if size > limits.max_bytes:
                raise TemplateRenderError("message", RenderBudgetExceeded(
                    f"rendered to {size} bytes, more than RENDER_MAX_BYTES "
                    f"({limits.max_bytes})"))
            return subject, html, text
        finally:
            _local.budget = None


def _render_part(part: str, template: Template, context: dict[str, Any]) -> str:
    try:
        return template.render(context)
    except Exception as exc:   # any error of the tenant's template is theirs
        raise TemplateRenderError(part, exc) from None


def compile_templates(subject: str, html: str | None, text: str | None,
                      limits: TemplateLimits = TemplateLimits()) -> CompiledTemplates:
    subject_t, needed, count = _parse(_plain, "subject", subject, limits)
    in_subject = frozenset(needed)
    html_t = text_t = None
    if html is not None:
        html_t, more, n = _parse(_html, "html", html, limits)
        needed |= more
        count += n
    if text is not None:
        text_t, more, n = _parse(_plain, "text", text, limits)
        needed |= more
        count += n
    return CompiledTemplates(subject_t, html_t, text_t, frozenset(needed), in_subject, count)


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
