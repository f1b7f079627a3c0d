"""Static checks of Lua routes: ``trio-sip check``, and the server refuses to start on them.

OpenSIPS refuses to start when its script calls a function in a route type where it is
not allowed; this module does the same for Lua routes written against ``KSR``, from the
source text and the module export tables (script/exports.py), without running anything.

Theory of operation
-------------------
1. :func:`tokenize` is a complete Lua 5.1-5.4/LuaJIT lexer (long strings and comments
   ``[==[ ]==]``, every string escape, decimal and hex numbers, LuaJIT's ``LL``/``ULL``/``i``
   suffixes), so text in strings and comments is never taken for code.
2. A small recursive-descent parser builds the statements and expressions (the whole
   Lua grammar, priorities included): statement ends and the scope of every ``local``
   are then exact, which a token scan cannot get right (``local f = f()``).
3. One walk with a stack of lexical scopes collects, per function body: every reference
   to ``KSR.<mod>.<fn>`` (calls with their argument lists), the calls of functions that
   can be resolved statically (global functions by name, ``_G.name``, local functions
   never reassigned, functions handed straight to ``pcall``/``xpcall`` or called in
   place), and the functions armed by name (``KSR.tm.t_on_failure("name")``, ...).
4. Route types are propagated from the entry points and the armed functions along the
   call graph (breadth first, so each message shows a shortest path); a ``KSR`` call in
   a body that can run in a route type its export does not allow is an error. Guards
   narrow what runs where, as in Kamailio's own example script: the code under
   ``if KSR.tmx.t_is_branch_route() > 0 then`` (or after ``if KSR.siputils.is_request()
   < 0 then return end``, or right of ``and``/``or``) is only checked for the route types
   where it can run.

Only what is certain is an error. A global defined twice, a local reassigned, a
function stored in a table or passed around, ``_G[name]()``: none of these is followed.
When the script can define globals out of sight (``loadstring``, ``setfenv``, a
``require`` that cannot be found, ``_G[expr] = ...``), names that seem missing are
reported as warnings, not errors.
"""

from __future__ import annotations

import difflib
import operator
import re
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, TypeAlias

from .engine import ScriptError, packaged_lua_dir
from .exports import ANY_ROUTE, Export, Module, RouteType

Severity = Literal["error", "warning"]

__all__ = [
    "LuaSyntaxError",
    "Problem",
    "RouteCheckError",
    "Token",
    "check_routes",
    "format_problem",
    "parse",
    "tokenize",
]


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding, located at a file, line and column (both 1-based)."""

    file: str
    line: int
    column: int
    message: str
    severity: Severity = "error"
    #: which check found it: "syntax", "unknown", "arity", "type", "missing", "route",
    #: "wait", "pv-name", "unused", "redefined", "undefined", "read"
    check: str = ""


def format_problem(p: Problem) -> str:
    """``routes/x.lua:12:5: error: ...``, the form compilers and editors understand."""
    return f"{p.file}:{p.line}:{p.column}: {p.severity}: {p.message}"


class RouteCheckError(ScriptError):
    """The routes have errors that the static checks found: the server does not start."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(format_problem(p) for p in self.problems))


class LuaSyntaxError(Exception):
    def __init__(self, message: str, line: int, col: int) -> None:
        super().__init__(f"{line}:{col}: {message}")
        self.message = message
        self.line = line
        self.col = col


# ---------------------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------------------

TokenKind = Literal["name", "keyword", "string", "number", "op", "eof"]


@dataclass(frozen=True, slots=True)
class Token:
    kind: TokenKind
    #: the name, keyword or operator; a string's decoded value; a number's source text
    text: str
    line: int
    col: int
    #: a number's value (None when malformed)
    value: int | float | None = None


KEYWORDS: Final = frozenset((
    "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if",
    "in", "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while",
))
_OPS3: Final = ("...",)
_OPS2: Final = ("..", "==", "~=", "<=", ">=", "<<", ">>", "//", "::")
_OPS1: Final = frozenset("+-*/%^#&~|<>=(){}[];:,.")
_NEWLINES: Final = re.compile(r"\r\n|\n\r|\r")
_LONG_OPEN: Final = re.compile(r"\[(=*)\[")
# LuaJIT takes any byte >= 0x80 as part of a name; so do we (Lua 5.4 refuses them at load).
_NAME: Final = re.compile(r"[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*")
_NUMERAL: Final = re.compile(r"0[xX](?:[pP][+-]|[0-9A-Za-z_.])*|(?:[eE][+-]|[0-9A-Za-z_.])+")
_HEX_NUM: Final = re.compile(r"0[xX]([0-9A-Fa-f]*)(\.[0-9A-Fa-f]*)?([pP][+-]?[0-9]+)?")
_DEC_NUM: Final = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_NUM_SUFFIX: Final = re.compile(r"(?:[uU]?[lL][lL]|[iI])$")
_UNICODE_ESCAPE: Final = re.compile(r"\{([0-9A-Fa-f]+)\}")
_ESCAPES: Final = {
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
    "\\": "\\", '"': '"', "'": "'", "\n": "\n",
}


def _number(text: str) -> int | float | None:
    body = _NUM_SUFFIX.sub("", text)
    m = _HEX_NUM.fullmatch(body)
    if m is not None:
        digits, frac, exp = m.groups()
        if not digits and (not frac or len(frac) < 2):
            return None
        if frac is None and exp is None:
            return int(digits, 16)
        try:
            return float.fromhex(body)
        except ValueError:
            return None
    m = _DEC_NUM.fullmatch(body)
    if m is None:
        return None
    if "." not in body and m.group(2) is None:
        return int(body)
    return float(body)


def tokenize(source: str) -> list[Token]:
    """The tokens of a Lua chunk, ending with an ``eof`` token; comments are dropped.

    Line breaks are ``\\n``, ``\\r``, ``\\r\\n`` or ``\\n\\r`` as in Lua; columns count
    characters from 1. Raises :class:`LuaSyntaxError` on text Lua would not load."""
    src = _NEWLINES.sub("\n", source)
    toks: list[Token] = []
    n = len(src)
    i = 0
    line = 1
    bol = 0  # index where the current line begins
    if src.startswith("#"):  # a shebang line: loadfile skips it
        j = src.find("\n")
        i = n if j < 0 else j
    while i < n:
        c = src[i]
        if c == "\n":
            line += 1
            i += 1
            bol = i
            continue
        if c in " \t\f\v":
            i += 1
            continue
        col = i - bol + 1
        if c == "-" and src.startswith("--", i):
            m = _LONG_OPEN.match(src, i + 2)
            if m is not None:
                _, i, line, bol = _long_bracket(src, m, line, col, bol, "comment")
            else:
                j = src.find("\n", i)
                i = n if j < 0 else j
            continue
        if c == "[":
            m = _LONG_OPEN.match(src, i)
            if m is not None:
                start = line
                text, i, line, bol = _long_bracket(src, m, line, col, bol, "string")
                toks.append(Token("string", text, start, col))
                continue
        if c in "\"'":
            start = line
            text, i, line, bol = _quoted(src, i, line, col, bol)
            toks.append(Token("string", text, start, col))
            continue
        if "0" <= c <= "9" or (c == "." and i + 1 < n and "0" <= src[i + 1] <= "9"):
            m = _NUMERAL.match(src, i)
            assert m is not None
            text = m.group()
            toks.append(Token("number", text, line, col, _number(text)))
            i = m.end()
            continue
        m = _NAME.match(src, i)
        if m is not None:
            word = m.group()
            toks.append(Token("keyword" if word in KEYWORDS else "name", word, line, col))
            i = m.end()
            continue
        for op in (*_OPS3, *_OPS2):
            if src.startswith(op, i):
                toks.append(Token("op", op, line, col))
                i += len(op)
                break
        else:
            if c not in _OPS1:
                raise LuaSyntaxError(f"unexpected symbol {c!r}", line, col)
            toks.append(Token("op", c, line, col))
            i += 1
    toks.append(Token("eof", "<eof>", line, i - bol + 1))
    return toks


def _long_bracket(src: str, m: re.Match[str], line: int, col: int, bol: int,
                  what: str) -> tuple[str, int, int, int]:
    close = "]" + m.group(1) + "]"
    start = m.end()
    end = src.find(close, start)
    if end < 0:
        raise LuaSyntaxError(f"unfinished long {what}", line, col)
    text = src[start:end]
    nl = text.count("\n")
    if nl:
        line += nl
        bol = src.rfind("\n", start, end) + 1
    if text.startswith("\n"):  # a newline right after the opening bracket is skipped
        text = text[1:]
    return text, end + len(close), line, bol


def _quoted(src: str, i: int, line: int, col: int, bol: int) -> tuple[str, int, int, int]:
    quote = src[i]
    start_line = line
    j = i + 1
    n = len(src)
    out: list[str] = []
    while True:
        if j >= n or src[j] == "\n":
            raise LuaSyntaxError("unfinished string", start_line, col)
        c = src[j]
        if c == quote:
            return "".join(out), j + 1, line, bol
        if c != "\\":
            out.append(c)
            j += 1
            continue
        j += 1
        if j >= n:
            raise LuaSyntaxError("unfinished string", start_line, col)
        e = src[j]
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
            j += 1
            if e == "\n":
                line += 1
                bol = j
        elif e == "x":
            hx = src[j + 1:j + 3]
            if len(hx) != 2 or not all(h in "0123456789abcdefABCDEF" for h in hx):
                raise LuaSyntaxError("hexadecimal digit expected", line, j - bol + 1)
            out.append(chr(int(hx, 16)))
            j += 3
        elif e == "z":
            j += 1
            while j < n and src[j] in " \t\f\v\n":
                if src[j] == "\n":
                    line += 1
                    bol = j + 1
                j += 1
        elif "0" <= e <= "9":
            k = j
            while k < n and k < j + 3 and "0" <= src[k] <= "9":
                k += 1
            v = int(src[j:k])
            if v > 255:
                raise LuaSyntaxError("decimal escape too large", line, j - bol + 1)
            out.append(chr(v))
            j = k
        elif e == "u":
            m = _UNICODE_ESCAPE.match(src, j + 1)
            if m is None:
                raise LuaSyntaxError("malformed \\u{XXX} escape", line, j - bol + 1)
            cp = int(m.group(1), 16)
            out.append(chr(cp) if cp < 0x110000 else "\ufffd")
            j = m.end()
        else:  # Lua 5.1 keeps the character; later versions refuse it at load
            out.append(e)
            j += 1


# ---------------------------------------------------------------------------------------
# Syntax tree (only what the checks need: every expression and statement kind)
# ---------------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class Const:
    kind: Literal["str", "num", "nil", "bool"]
    value: str | int | float | bool | None
    line: int
    col: int


@dataclass(eq=False, slots=True)
class Vararg:
    line: int
    col: int


@dataclass(eq=False, slots=True)
class Func:
    params: list[str]
    body: list[Stmt]
    line: int
    col: int
    is_method: bool = False


@dataclass(eq=False, slots=True)
class Table:
    items: list[Expr]
    line: int
    col: int


@dataclass(eq=False, slots=True)
class BinOp:
    op: str
    left: Expr
    right: Expr
    line: int
    col: int


@dataclass(eq=False, slots=True)
class UnOp:
    op: str
    operand: Expr
    line: int
    col: int


@dataclass(eq=False, slots=True)
class Name:
    name: str
    line: int
    col: int


@dataclass(eq=False, slots=True)
class Index:
    obj: Expr
    key: Expr
    line: int
    col: int


@dataclass(eq=False, slots=True)
class Call:
    func: Expr
    args: list[Expr]
    line: int
    col: int
    method: str | None = None


@dataclass(eq=False, slots=True)
class Paren:
    expr: Expr
    line: int
    col: int


Expr: TypeAlias = Const | Vararg | Func | Table | BinOp | UnOp | Name | Index | Call | Paren


@dataclass(eq=False, slots=True)
class Local:
    names: list[Name]
    exprs: list[Expr]


@dataclass(eq=False, slots=True)
class LocalFunction:
    name: Name
    func: Func


@dataclass(eq=False, slots=True)
class FunctionStat:
    path: list[Name]
    method: str | None
    func: Func


@dataclass(eq=False, slots=True)
class Assign:
    targets: list[Expr]
    exprs: list[Expr]


@dataclass(eq=False, slots=True)
class CallStat:
    call: Call


@dataclass(eq=False, slots=True)
class Do:
    body: list[Stmt]


@dataclass(eq=False, slots=True)
class While:
    cond: Expr
    body: list[Stmt]


@dataclass(eq=False, slots=True)
class Repeat:
    body: list[Stmt]
    cond: Expr


@dataclass(eq=False, slots=True)
class If:
    tests: list[tuple[Expr, list[Stmt]]]
    orelse: list[Stmt] | None


@dataclass(eq=False, slots=True)
class NumFor:
    var: Name
    start: Expr
    stop: Expr
    step: Expr | None
    body: list[Stmt]


@dataclass(eq=False, slots=True)
class GenFor:
    names: list[Name]
    exprs: list[Expr]
    body: list[Stmt]


@dataclass(eq=False, slots=True)
class Return:
    exprs: list[Expr]


@dataclass(eq=False, slots=True)
class Other:
    """break, goto and labels."""

    kind: Literal["break", "goto", "label"]


Stmt: TypeAlias = (Local | LocalFunction | FunctionStat | Assign | CallStat | Do | While
                   | Repeat | If | NumFor | GenFor | Return | Other)

#: left and right priorities of the binary operators (Lua 5.4's lparser.c)
_BINARY: Final[dict[str, tuple[int, int]]] = {
    "or": (1, 1), "and": (2, 2),
    "<": (3, 3), ">": (3, 3), "<=": (3, 3), ">=": (3, 3), "~=": (3, 3), "==": (3, 3),
    "|": (4, 4), "~": (5, 5), "&": (6, 6), "<<": (7, 7), ">>": (7, 7),
    "..": (9, 8), "+": (10, 10), "-": (10, 10),
    "*": (11, 11), "/": (11, 11), "//": (11, 11), "%": (11, 11),
    "^": (14, 13),
}
_UNARY_PRIORITY: Final = 12
_BLOCK_END: Final = frozenset(("end", "else", "elseif", "until"))


class _Parser:
    def __init__(self, toks: list[Token]) -> None:
        self.toks = toks
        self.p = 0

    # -- token helpers --------------------------------------------------------------

    def peek(self, k: int = 0) -> Token:
        return self.toks[min(self.p + k, len(self.toks) - 1)]

    def next(self) -> Token:
        tok = self.toks[self.p]
        if tok.kind != "eof":
            self.p += 1
        return tok

    def at(self, text: str, k: int = 0) -> bool:
        tok = self.peek(k)
        return tok.kind in ("op", "keyword") and tok.text == text

    def accept(self, text: str) -> Token | None:
        return self.next() if self.at(text) else None

    def error(self, message: str, tok: Token | None = None) -> LuaSyntaxError:
        tok = tok or self.peek()
        near = tok.text if tok.kind != "string" else "string"
        return LuaSyntaxError(f"{message} near '{near}'", tok.line, tok.col)

    def expect(self, text: str, opener: Token | None = None) -> Token:
        if not self.at(text):
            what = f"'{text}' expected"
            if opener is not None and opener.line != self.peek().line:
                what += f" (to close '{opener.text}' at line {opener.line})"
            raise self.error(what)
        return self.next()

    def name(self) -> Name:
        tok = self.peek()
        if tok.kind != "name":
            raise self.error("<name> expected")
        self.next()
        return Name(tok.text, tok.line, tok.col)

    # -- statements -------------------------------------------------------------------

    def chunk(self) -> list[Stmt]:
        body = self.block()
        if self.peek().kind != "eof":
            raise self.error("'<eof>' expected")
        return body

    def block(self) -> list[Stmt]:
        body: list[Stmt] = []
        while True:
            tok = self.peek()
            if tok.kind == "eof" or (tok.kind == "keyword" and tok.text in _BLOCK_END):
                return body
            if tok.kind == "keyword" and tok.text == "return":
                self.next()
                exprs: list[Expr] = []
                nxt = self.peek()
                if not (nxt.kind == "eof" or self.at(";")
                        or (nxt.kind == "keyword" and nxt.text in _BLOCK_END)):
                    exprs = self.exprlist()
                self.accept(";")
                body.append(Return(exprs))
                return body
            st = self.statement()
            if st is not None:
                body.append(st)

    def statement(self) -> Stmt | None:
        tok = self.peek()
        if tok.kind == "op":
            if tok.text == ";":
                self.next()
                return None
            if tok.text == "::":
                self.next()
                self.name()
                self.expect("::")
                return Other("label")
        if tok.kind == "keyword":
            kw = tok.text
            if kw == "break":
                self.next()
                return Other("break")
            if kw == "goto":
                self.next()
                self.name()
                return Other("goto")
            if kw == "do":
                self.next()
                body = self.block()
                self.expect("end", tok)
                return Do(body)
            if kw == "while":
                self.next()
                cond = self.expr()
                self.expect("do")
                body = self.block()
                self.expect("end", tok)
                return While(cond, body)
            if kw == "repeat":
                self.next()
                body = self.block()
                self.expect("until", tok)
                return Repeat(body, self.expr())
            if kw == "if":
                return self.if_stat()
            if kw == "for":
                return self.for_stat()
            if kw == "function":
                self.next()
                path = [self.name()]
                while self.accept("."):
                    path.append(self.name())
                method = self.name().name if self.accept(":") else None
                return FunctionStat(path, method, self.funcbody(tok, method is not None))
            if kw == "local":
                self.next()
                ftok = self.accept("function")
                if ftok is not None:
                    return LocalFunction(self.name(), self.funcbody(ftok, False))
                names = [self.attname()]
                while self.accept(","):
                    names.append(self.attname())
                exprs = self.exprlist() if self.accept("=") else []
                return Local(names, exprs)
        e = self.suffixedexp()
        if self.at("=") or self.at(","):
            targets = [e]
            while self.accept(","):
                targets.append(self.suffixedexp())
            for t in targets:
                if not isinstance(t, (Name, Index)):
                    raise LuaSyntaxError("syntax error (cannot assign to this)", t.line, t.col)
            self.expect("=")
            return Assign(targets, self.exprlist())
        if not isinstance(e, Call):
            raise self.error("syntax error")
        return CallStat(e)

    def attname(self) -> Name:
        n = self.name()
        if self.accept("<"):  # Lua 5.4: <const>, <close>
            self.name()
            self.expect(">")
        return n

    def if_stat(self) -> If:
        opener = self.next()
        tests: list[tuple[Expr, list[Stmt]]] = []
        cond = self.expr()
        self.expect("then")
        tests.append((cond, self.block()))
        orelse: list[Stmt] | None = None
        while True:
            if self.accept("elseif"):
                cond = self.expr()
                self.expect("then")
                tests.append((cond, self.block()))
            elif self.accept("else"):
                orelse = self.block()
                self.expect("end", opener)
                break
            else:
                self.expect("end", opener)
                break
        return If(tests, orelse)

    def for_stat(self) -> Stmt:
        opener = self.next()
        first = self.name()
        if self.accept("="):
            start = self.expr()
            self.expect(",")
            stop = self.expr()
            step = self.expr() if self.accept(",") else None
            self.expect("do")
            body = self.block()
            self.expect("end", opener)
            return NumFor(first, start, stop, step, body)
        names = [first]
        while self.accept(","):
            names.append(self.name())
        self.expect("in")
        exprs = self.exprlist()
        self.expect("do")
        body = self.block()
        self.expect("end", opener)
        return GenFor(names, exprs, body)

    def funcbody(self, opener: Token, is_method: bool) -> Func:
        self.expect("(")
        params: list[str] = []
        if not self.at(")"):
            while True:
                if self.accept("..."):
                    params.append("...")
                    break
                params.append(self.name().name)
                if not self.accept(","):
                    break
        self.expect(")")
        body = self.block()
        self.expect("end", opener)
        return Func(params, body, opener.line, opener.col, is_method)

    # -- expressions -------------------------------------------------------------------

    def exprlist(self) -> list[Expr]:
        exprs = [self.expr()]
        while self.accept(","):
            exprs.append(self.expr())
        return exprs

    def expr(self, limit: int = 0) -> Expr:
        tok = self.peek()
        e: Expr
        if (tok.kind == "keyword" and tok.text == "not") or (
                tok.kind == "op" and tok.text in ("-", "#", "~")):
            self.next()
            e = UnOp(tok.text, self.expr(_UNARY_PRIORITY), tok.line, tok.col)
        else:
            e = self.simpleexp()
        while True:
            tok = self.peek()
            prio = _BINARY.get(tok.text) if tok.kind in ("op", "keyword") else None
            if prio is None or prio[0] <= limit:
                return e
            self.next()
            e = BinOp(tok.text, e, self.expr(prio[1]), e.line, e.col)

    def simpleexp(self) -> Expr:
        tok = self.peek()
        if tok.kind == "number":
            self.next()
            return Const("num", tok.value, tok.line, tok.col)
        if tok.kind == "string":
            self.next()
            return Const("str", tok.text, tok.line, tok.col)
        if tok.kind == "keyword":
            if tok.text == "nil":
                self.next()
                return Const("nil", None, tok.line, tok.col)
            if tok.text in ("true", "false"):
                self.next()
                return Const("bool", tok.text == "true", tok.line, tok.col)
            if tok.text == "function":
                self.next()
                return self.funcbody(tok, False)
        if tok.kind == "op":
            if tok.text == "...":
                self.next()
                return Vararg(tok.line, tok.col)
            if tok.text == "{":
                return self.table()
        return self.suffixedexp()

    def primaryexp(self) -> Expr:
        tok = self.peek()
        if tok.kind == "name":
            self.next()
            return Name(tok.text, tok.line, tok.col)
        if self.at("("):
            self.next()
            e = self.expr()
            self.expect(")", tok)
            return Paren(e, tok.line, tok.col)
        raise self.error("unexpected symbol")

    def suffixedexp(self) -> Expr:
        e = self.primaryexp()
        while True:
            tok = self.peek()
            if self.at("."):
                self.next()
                key = self.name()
                e = Index(e, Const("str", key.name, key.line, key.col), e.line, e.col)
            elif self.at("["):
                self.next()
                key_e = self.expr()
                self.expect("]")
                e = Index(e, key_e, e.line, e.col)
            elif self.at(":"):
                self.next()
                method = self.name().name
                e = Call(e, self.callargs(), e.line, e.col, method)
            elif self.at("(") or self.at("{") or tok.kind == "string":
                e = Call(e, self.callargs(), e.line, e.col)
            else:
                return e

    def callargs(self) -> list[Expr]:
        tok = self.peek()
        if tok.kind == "string":
            self.next()
            return [Const("str", tok.text, tok.line, tok.col)]
        if self.at("{"):
            return [self.table()]
        opener = self.expect("(")
        if self.accept(")"):
            return []
        args = self.exprlist()
        self.expect(")", opener)
        return args

    def table(self) -> Table:
        opener = self.expect("{")
        items: list[Expr] = []
        while not self.at("}"):
            if self.at("["):
                self.next()
                items.append(self.expr())
                self.expect("]")
                self.expect("=")
                items.append(self.expr())
            elif self.peek().kind == "name" and self.at("=", 1):
                self.next()
                self.next()
                items.append(self.expr())
            else:
                items.append(self.expr())
            if not (self.accept(",") or self.accept(";")):
                break
        self.expect("}", opener)
        return Table(items, opener.line, opener.col)


def parse(source: str) -> list[Stmt]:
    """The statements of a Lua chunk; raises :class:`LuaSyntaxError`."""
    return _Parser(tokenize(source)).chunk()


# ---------------------------------------------------------------------------------------
# The walk: functions, KSR references, call edges, armed names
# ---------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Fn:
    """A function body (or the main chunk) and what it does that the checks need."""

    name: str
    file: str
    line: int
    col: int
    is_global: bool = False
    ksr: list[_KsrRef] = field(default_factory=list)
    #: (target, line, col, route types): a global name, a local binding or a function
    #: body, called where the route types are narrowed to these by ``if`` guards
    calls: list[tuple[str | _Binding | _Fn, int, int, RouteType]] = field(
        default_factory=list)


@dataclass(eq=False)
class _Binding:
    """A local variable; calls through it are followed if it holds one known function."""

    name: str
    funcs: list[_Fn] = field(default_factory=list)
    reassigned: bool = False


@dataclass(eq=False)
class _KsrRef:
    path: tuple[str, ...]
    fn: _Fn
    line: int
    col: int
    #: the argument list of a call (a method call's self first), None if not a call
    args: list[Expr] | None = None
    method: bool = False
    #: the route types the code can run in here, narrowed by ``if`` guards such as
    #: ``KSR.tmx.t_is_branch_route() > 0``
    mask: RouteType = ANY_ROUTE


@dataclass(eq=False)
class _Def:
    """A global name set by the script: to a function body, or to something else."""

    fn: _Fn | None
    file: str
    line: int
    col: int


@dataclass(eq=False)
class _FileInfo:
    path: str
    main: _Fn
    functions: list[_Fn] = field(default_factory=list)
    defs: dict[str, list[_Def]] = field(default_factory=dict)
    #: global names read anywhere (calls included), with the first place
    reads: dict[str, tuple[int, int]] = field(default_factory=dict)
    strings: set[str] = field(default_factory=set)
    requires: list[tuple[str, int, int]] = field(default_factory=list)
    #: why globals may be defined out of sight: (reason, line, col)
    open_reasons: list[tuple[str, int, int]] = field(default_factory=list)
    #: ``_G[expr]`` is read: a function may be called by a computed name
    dynamic_calls: bool = False
    ksr_assigned: set[tuple[str, ...]] = field(default_factory=set)
    ksr_reassigned: tuple[int, int] | None = None


R = RouteType
#: route-type predicates: (module, function) -> (route types where it is true, where false)
_MSG_IS_REPLY: Final = ANY_ROUTE & ~(R.REQUEST | R.BRANCH)  # routes that may see a reply
_GUARDS: Final[dict[tuple[str, ...], tuple[RouteType, RouteType]]] = {
    ("tmx", "t_is_request_route"): (R.REQUEST, ANY_ROUTE & ~R.REQUEST),
    ("tmx", "t_is_failure_route"): (R.FAILURE, ANY_ROUTE & ~R.FAILURE),
    ("tmx", "t_is_branch_route"): (R.BRANCH, ANY_ROUTE & ~R.BRANCH),
    ("tmx", "t_is_reply_route"): (R.ONREPLY | R.CORE_REPLY,
                                  ANY_ROUTE & ~(R.ONREPLY | R.CORE_REPLY)),
    # the message is a request: not in a reply route; a reply: not in request/branch routes
    ("siputils", "is_request"): (ANY_ROUTE & ~(R.ONREPLY | R.CORE_REPLY), _MSG_IS_REPLY),
    ("siputils", "is_reply"): (_MSG_IS_REPLY, ANY_ROUTE & ~(R.ONREPLY | R.CORE_REPLY)),
}
_COMPARE: Final[dict[str, Callable[[float, float], bool]]] = {
    "==": operator.eq, "~=": operator.ne, "<": operator.lt, "<=": operator.le,
    ">": operator.gt, ">=": operator.ge,
}
_SWAPPED: Final = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}

_DYNAMIC_GLOBALS: Final = frozenset(
    ("load", "loadstring", "dofile", "loadfile", "setfenv", "getfenv", "_ENV", "module")
)


class _Walker:
    def __init__(self, path: str, modules: dict[str, Module]) -> None:
        self.path = path
        self.modules = modules
        #: the route types the code being walked can run in (narrowed by guards)
        self.mask: RouteType = ANY_ROUTE
        self.scopes: list[dict[str, _Binding]] = []
        self.fn_of: dict[int, _Fn] = {}
        self.info = _FileInfo(path, _Fn("<main chunk>", path, 1, 1))

    # -- scopes -----------------------------------------------------------------------

    def lookup(self, name: str) -> _Binding | None:
        for scope in reversed(self.scopes):
            b = scope.get(name)
            if b is not None:
                return b
        return None

    def declare(self, name: str) -> _Binding:
        b = _Binding(name)
        self.scopes[-1][name] = b
        return b

    def is_global(self, e: Expr, name: str) -> bool:
        return isinstance(e, Name) and e.name == name and self.lookup(name) is None

    # -- entry -------------------------------------------------------------------------

    def walk(self, body: list[Stmt]) -> _FileInfo:
        self.scopes.append({})
        self.stmts(body, self.info.main)
        self.scopes.pop()
        return self.info

    def block(self, body: list[Stmt], fn: _Fn) -> None:
        self.scopes.append({})
        self.stmts(body, fn)
        self.scopes.pop()

    def stmts(self, body: list[Stmt], fn: _Fn) -> None:
        entry = self.mask
        for st in body:
            if isinstance(st, Other) and st.kind == "label":
                self.mask = entry  # a goto may land here from anywhere in the block
            self.stmt(st, fn)
        self.mask = entry

    def function(self, node: Func, name: str, *, is_global: bool = False) -> _Fn:
        f = _Fn(name, self.path, node.line, node.col, is_global)
        self.info.functions.append(f)
        self.fn_of[id(node)] = f
        self.scopes.append({})
        if node.is_method:
            self.declare("self")
        for p in node.params:
            if p != "...":
                self.declare(p)
        outer, self.mask = self.mask, ANY_ROUTE
        self.stmts(node.body, f)
        self.mask = outer
        self.scopes.pop()
        return f

    def anon_name(self, node: Func) -> str:
        return f"<function at {self.path}:{node.line}>"

    # -- statements ----------------------------------------------------------------------

    def stmt(self, st: Stmt, fn: _Fn) -> None:
        if isinstance(st, Local):
            fns = self.values(st.exprs, fn, [n.name for n in st.names])
            for i, n in enumerate(st.names):
                b = self.declare(n.name)
                if i in fns:
                    b.funcs.append(fns[i])
        elif isinstance(st, LocalFunction):
            b = self.declare(st.name.name)
            b.funcs.append(self.function(st.func, st.name.name))
        elif isinstance(st, FunctionStat):
            self.function_stat(st, fn)
        elif isinstance(st, Assign):
            self.assign(st, fn)
        elif isinstance(st, CallStat):
            self.expr(st.call, fn)
        elif isinstance(st, Do):
            self.block(st.body, fn)
        elif isinstance(st, While):
            self.expr(st.cond, fn)
            outer = self.mask
            self.mask = outer & self.cond_masks(st.cond)[0]
            self.block(st.body, fn)
            self.mask = outer
        elif isinstance(st, Repeat):
            self.scopes.append({})  # the condition sees the body's locals
            self.stmts(st.body, fn)
            self.expr(st.cond, fn)
            self.scopes.pop()
        elif isinstance(st, If):
            self.if_stat(st, fn)
        elif isinstance(st, NumFor):
            for e in (st.start, st.stop, st.step):
                if e is not None:
                    self.expr(e, fn)
            self.scopes.append({})
            self.declare(st.var.name)
            self.block(st.body, fn)
            self.scopes.pop()
        elif isinstance(st, GenFor):
            for e in st.exprs:
                self.expr(e, fn)
            self.scopes.append({})
            for n in st.names:
                self.declare(n.name)
            self.block(st.body, fn)
            self.scopes.pop()
        elif isinstance(st, Return):
            for e in st.exprs:
                self.expr(e, fn)

    def if_stat(self, st: If, fn: _Fn) -> None:
        """Each branch runs only where its guards allow; the statements after the ``if``
        run only where a branch that does not leave the block (return, break, goto,
        KSR.x.exit(), error()) could run."""
        rest = self.mask
        after = R(0)
        for cond, body in st.tests:
            self.expr(cond, fn)
            when_true, when_false = self.cond_masks(cond)
            self.mask = rest & when_true
            branch = self.mask
            self.block(body, fn)
            if not self.leaves(body):
                after |= branch
            rest &= when_false
        self.mask = rest
        if st.orelse is not None:
            self.block(st.orelse, fn)
            if not self.leaves(st.orelse):
                after |= rest
        else:
            after |= rest
        self.mask = after

    def leaves(self, body: list[Stmt]) -> bool:
        """True if the block never falls through to the statement after it."""
        if not body:
            return False
        last = body[-1]
        if isinstance(last, Return) or (isinstance(last, Other) and last.kind != "label"):
            return True
        if isinstance(last, CallStat):
            call = last.call
            if call.method is None and self.ksr_path(call.func) in (("x", "exit"),
                                                                     ("x", "drop")):
                return True
            return self.is_global(call.func, "error")
        if isinstance(last, Do):
            return self.leaves(last.body)
        if isinstance(last, If):
            return last.orelse is not None and self.leaves(last.orelse) and all(
                self.leaves(b) for _, b in last.tests)
        return False

    def guard(self, e: Expr) -> tuple[RouteType, RouteType, str] | None:
        """(route types if true, route types if false, return type) of a call of a
        route-type predicate such as ``KSR.tmx.t_is_branch_route()``."""
        while isinstance(e, Paren):
            e = e.expr
        if not isinstance(e, Call) or e.method is not None or e.args:
            return None
        path = self.ksr_path(e.func)
        if path is None or len(path) != 2 or path not in _GUARDS:
            return None
        mod = self.modules.get(path[0])
        export = mod.export(path[1]) if mod is not None else None
        if export is None:
            return None
        when_true, when_false = _GUARDS[path]
        return when_true, when_false, export.ret

    def cond_masks(self, e: Expr) -> tuple[RouteType, RouteType]:
        """The route types where ``e`` may be true, and where it may be false."""
        while isinstance(e, Paren):
            e = e.expr
        if isinstance(e, UnOp) and e.op == "not":
            when_true, when_false = self.cond_masks(e.operand)
            return when_false, when_true
        if isinstance(e, BinOp) and e.op in ("and", "or"):
            lt, lf = self.cond_masks(e.left)
            rt, rf = self.cond_masks(e.right)
            return (lt & rt, lf | rf) if e.op == "and" else (lt | rt, lf & rf)
        if isinstance(e, BinOp) and e.op in _COMPARE:
            op, g, c = e.op, self.guard(e.left), _const(e.right)
            if g is None:
                op, g, c = _SWAPPED.get(op, op), self.guard(e.right), _const(e.left)
            if g is not None and g[2] == "int" and c is not None and c.kind == "num":
                assert isinstance(c.value, (int, float))
                if_one = _COMPARE[op](1, c.value)  # these predicates return 1 or -1
                if_minus_one = _COMPARE[op](-1, c.value)
                if if_one and not if_minus_one:
                    return g[0], g[1]
                if if_minus_one and not if_one:
                    return g[1], g[0]
        g = self.guard(e)
        if g is not None and g[2] == "bool":
            return g[0], g[1]
        return ANY_ROUTE, ANY_ROUTE

    def values(self, exprs: list[Expr], fn: _Fn, names: list[str | None]) -> dict[int, _Fn]:
        """Walk the right-hand side; function expressions take the name they are given."""
        out: dict[int, _Fn] = {}
        for i, e in enumerate(exprs):
            if isinstance(e, Func):
                name = names[i] if i < len(names) else None
                out[i] = self.function(e, name or self.anon_name(e))
            else:
                self.expr(e, fn)
        return out

    def function_stat(self, st: FunctionStat, fn: _Fn) -> None:
        path = [n.name for n in st.path]
        first = st.path[0]
        if len(path) == 1 and st.method is None:
            b = self.lookup(first.name)
            if b is not None:  # assigns a local
                b.reassigned = True
                self.function(st.func, first.name)
            else:
                f = self.function(st.func, first.name, is_global=True)
                self.define(first.name, f, first.line, first.col)
            return
        if len(path) == 2 and st.method is None and self.is_global(first, "_G"):
            f = self.function(st.func, path[1], is_global=True)
            self.define(path[1], f, st.path[1].line, st.path[1].col)
            return
        self.read_name(first, fn)
        if self.is_global(first, "KSR"):
            self.info.ksr_assigned.add(tuple(path[1:] + ([st.method] if st.method else [])))
        label = ".".join(path) + (f":{st.method}" if st.method else "")
        self.function(st.func, label)

    def define(self, name: str, f: _Fn | None, line: int, col: int) -> None:
        self.info.defs.setdefault(name, []).append(_Def(f, self.path, line, col))
        if name == "KSR" and self.info.ksr_reassigned is None:
            self.info.ksr_reassigned = (line, col)

    def assign(self, st: Assign, fn: _Fn) -> None:
        names: list[str | None] = []
        for t in st.targets:
            if isinstance(t, Name):
                names.append(t.name)
            elif isinstance(t, Index) and self.global_key(t) is not None:
                names.append(self.global_key(t))
            else:
                names.append(None)
        fns = self.values(st.exprs, fn, names)
        for i, t in enumerate(st.targets):
            value = fns.get(i)
            if isinstance(t, Name):
                b = self.lookup(t.name)
                if b is not None:
                    b.reassigned = True
                else:
                    if value is not None:
                        value.is_global = True
                    self.define(t.name, value, t.line, t.col)
                continue
            assert isinstance(t, Index)
            if self.is_global(t.obj, "_G"):
                key = self.global_key(t)
                if key is not None:
                    if value is not None:
                        value.is_global = True
                    self.define(key, value, t.line, t.col)
                else:
                    self.info.open_reasons.append(("_G[...] is assigned", t.line, t.col))
                    self.expr(t.key, fn)
                continue
            path = self.ksr_path(t)
            if path is not None:
                self.info.ksr_assigned.add(path)
                if len(path) > 1:
                    self.expr(t.obj, fn)
                continue
            self.expr(t.obj, fn)
            self.expr(t.key, fn)

    # -- expressions ------------------------------------------------------------------

    def ksr_path(self, e: Expr) -> tuple[str, ...] | None:
        keys: list[str] = []
        while isinstance(e, Index):
            if not (isinstance(e.key, Const) and e.key.kind == "str"):
                return None
            keys.append(str(e.key.value))
            e = e.obj
        if keys and self.is_global(e, "KSR"):
            return tuple(reversed(keys))
        return None

    def global_key(self, e: Index) -> str | None:
        """``name`` for ``_G.name`` / ``_G["name"]`` (with _G the global table), else None."""
        if not self.is_global(e.obj, "_G"):
            return None
        key = _const(e.key)
        return str(key.value) if key is not None and key.kind == "str" else None

    def read_name(self, e: Name, fn: _Fn) -> None:
        if self.lookup(e.name) is not None:
            return
        self.info.reads.setdefault(e.name, (e.line, e.col))
        if e.name in _DYNAMIC_GLOBALS:
            self.info.open_reasons.append((f"{e.name} is used", e.line, e.col))

    def expr(self, e: Expr, fn: _Fn) -> None:
        if isinstance(e, Const):
            if e.kind == "str":
                self.info.strings.add(str(e.value))
        elif isinstance(e, Func):
            self.function(e, self.anon_name(e))
        elif isinstance(e, Table):
            self.values(e.items, fn, [])
        elif isinstance(e, BinOp):
            self.expr(e.left, fn)
            outer = self.mask
            if e.op in ("and", "or"):  # the right operand runs only if the left one is
                when_true, when_false = self.cond_masks(e.left)  # true (and) / false (or)
                self.mask &= when_true if e.op == "and" else when_false
            self.expr(e.right, fn)
            self.mask = outer
        elif isinstance(e, (UnOp, Paren)):
            self.expr(e.operand if isinstance(e, UnOp) else e.expr, fn)
        elif isinstance(e, Name):
            self.read_name(e, fn)
        elif isinstance(e, Index):
            path = self.ksr_path(e)
            if path is not None:
                fn.ksr.append(_KsrRef(path, fn, e.line, e.col, mask=self.mask))
                return
            if self.is_global(e.obj, "_G"):
                key = self.global_key(e)
                if key is not None:
                    self.info.reads.setdefault(key, (e.line, e.col))
                else:
                    self.info.dynamic_calls = True
            self.expr(e.obj, fn)
            self.expr(e.key, fn)
        elif isinstance(e, Call):
            self.call(e, fn)

    def call(self, e: Call, fn: _Fn) -> None:
        func = e.func
        path = self.ksr_path(func)
        if path is not None:
            args = list(e.args)
            if e.method is not None:
                path = (*path, e.method)
                args.insert(0, Table([], e.line, e.col))  # self: the KSR table
            fn.ksr.append(_KsrRef(path, fn, e.line, e.col, args, e.method is not None,
                                  self.mask))
            self.values(e.args, fn, [])
            return
        if e.method is not None:
            self.expr(func, fn)
            self.values(e.args, fn, [])
            return
        fns = self.values(e.args, fn, [])
        if isinstance(func, Name):
            b = self.lookup(func.name)
            if b is not None:
                fn.calls.append((b, e.line, e.col, self.mask))
                return
            self.read_name(func, fn)
            name = func.name
            fn.calls.append((name, e.line, e.col, self.mask))
            if name in ("pcall", "xpcall"):
                # runs its function argument(s) at once, in this route
                for i, a in enumerate(e.args[:2 if name == "xpcall" else 1]):
                    if i in fns:
                        fn.calls.append((fns[i], a.line, a.col, self.mask))
                    elif isinstance(a, Name):
                        ab = self.lookup(a.name)
                        fn.calls.append((ab if ab is not None else a.name, a.line, a.col,
                                         self.mask))
            elif name == "require":
                arg = _const(e.args[0]) if len(e.args) == 1 else None
                if arg is not None and arg.kind == "str":
                    self.info.requires.append((str(arg.value), e.line, e.col))
                else:
                    self.info.open_reasons.append(("require() of a computed name",
                                                   e.line, e.col))
            elif name == "rawset" and e.args and self.is_global(e.args[0], "_G"):
                ckey = _const(e.args[1]) if len(e.args) > 1 else None
                if ckey is not None and ckey.kind == "str":
                    self.define(str(ckey.value), None, e.line, e.col)
                else:
                    self.info.open_reasons.append(("rawset(_G, ...)", e.line, e.col))
            return
        gkey = self.global_key(func) if isinstance(func, Index) else None
        if gkey is not None:
            self.info.reads.setdefault(gkey, (e.line, e.col))
            fn.calls.append((gkey, e.line, e.col, self.mask))
            return
        if isinstance(func, Paren) and isinstance(func.expr, Func):
            f = self.function(func.expr, self.anon_name(func.expr))
            fn.calls.append((f, e.line, e.col, self.mask))
            return
        self.expr(func, fn)


def _const(e: Expr) -> Const | None:
    """The constant value of an expression, if it has one (negation, parentheses and
    concatenation of strings folded)."""
    while isinstance(e, Paren):
        e = e.expr
    if isinstance(e, Const):
        return e
    if isinstance(e, UnOp) and e.op == "-":
        c = _const(e.operand)
        if c is not None and c.kind == "num" and isinstance(c.value, (int, float)):
            return Const("num", -c.value, e.line, e.col)
    if isinstance(e, BinOp) and e.op == "..":
        left, right = _const(e.left), _const(e.right)
        if left is not None and right is not None and left.kind == right.kind == "str":
            return Const("str", str(left.value) + str(right.value), e.line, e.col)
    return None


def _multi(e: Expr) -> bool:
    """True if the expression may give any number of values (last in an argument list)."""
    return isinstance(e, (Call, Vararg))


def _kind(e: Expr) -> str:
    c = _const(e)
    if c is not None:
        return c.kind
    while isinstance(e, Paren):
        e = e.expr
    if isinstance(e, Table):
        return "table"
    if isinstance(e, Func):
        return "function"
    return "expr"


def _concatenation(e: Expr) -> bool:
    while isinstance(e, Paren):
        e = e.expr
    return isinstance(e, BinOp) and e.op == ".." and _const(e) is None


# ---------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------

#: route types where a route cannot wait (runtime/core.py: the core reply route runs in
#: the receive loop, branch routes while t_relay builds the branches)
_NO_WAIT: Final = R.CORE_REPLY
#: functions that arm another function by name: (module, function) -> [(argument index,
#: route type it will run in, None: the caller's own route types)]
_ARMING: Final[dict[tuple[str, str], tuple[tuple[int, RouteType | None], ...]]] = {
    ("tm", "t_on_failure"): ((0, R.FAILURE),),
    ("tm", "t_on_branch"): ((0, R.BRANCH),),
    ("tm", "t_on_reply"): ((0, R.ONREPLY),),
    ("tm", "t_on_branch_failure"): ((0, R.BRANCH_FAILURE),),
    ("tmx", "t_continue"): ((2, R.EVENT),),
    ("async", "route"): ((0, None),),
    ("async", "ms_route"): ((0, None),),
    ("async", "task_route"): ((0, None),),
    ("async", "launch"): ((0, R.EVENT), (1, R.EVENT)),
}
#: global names the Lua runtime (and the engine) provide
_LUA_GLOBALS: Final = frozenset((
    "assert", "collectgarbage", "dofile", "error", "getmetatable", "ipairs", "load", "loadfile",
    "next", "pairs", "pcall", "print", "rawequal", "rawget", "rawlen", "rawset", "require",
    "select", "setmetatable", "tonumber", "tostring", "type", "xpcall", "unpack", "loadstring",
    "getfenv", "setfenv", "module", "gcinfo", "newproxy", "warn", "_G", "_VERSION", "_ENV",
    "KSR", "tsip_start", "tsip_resume", "tsip_abandon", "tsip_pending", "tsip_strict",
    "tsip_log", "tsip_log_on",
))


@dataclass(frozen=True, slots=True)
class _Seed:
    fn: _Fn
    rtype: RouteType
    origin: str  # "request_route entry point", "armed at x.lua:12"


@dataclass(eq=False)
class _Checker:
    modules: dict[str, Module]
    request_route: str
    reply_route: str
    files: list[_FileInfo]
    #: functions the config names as routes: (name, route type, where it is named)
    config_routes: Sequence[tuple[str, RouteType, str]] = ()
    problems: list[Problem] = field(default_factory=list)

    def add(self, file: str, line: int, col: int, message: str,
            severity: Severity = "error", check: str = "") -> None:
        self.problems.append(Problem(file, line, col, message, severity, check))

    # -- the global namespace -------------------------------------------------------

    def run(self) -> list[Problem]:
        self.defs: dict[str, list[_Def]] = {}
        self.open_reasons: list[tuple[str, str, int, int]] = []
        for fi in self.files:
            for name, ds in fi.defs.items():
                self.defs.setdefault(name, []).extend(ds)
            self.open_reasons.extend((r, fi.path, ln, c) for r, ln, c in fi.open_reasons)
        self.ksr_assigned: set[tuple[str, ...]] = set()
        for fi in self.files:
            self.ksr_assigned |= fi.ksr_assigned
        self.waits = self._waiting_exports()
        self.seeds: list[_Seed] = []
        self.edges: dict[_Fn, list[tuple[_Fn, str, int, RouteType, str]]] = {}
        ksr_off = next(((fi.path, fi.ksr_reassigned) for fi in self.files
                        if fi.ksr_reassigned is not None), None)
        if ksr_off is not None:
            path, (line, col) = ksr_off[0], ksr_off[1]
            self.add(path, line, col, "KSR is assigned here: the KSR checks are skipped",
                     "warning", "redefined")
        self._redefinitions()
        self._entry_points()
        for fi in self.files:
            for f in (fi.main, *fi.functions):
                for target, line, _col, mask in f.calls:
                    g = self._resolve(target)
                    if g is not None:
                        self.edges.setdefault(f, []).append((g, f.file, line, mask, ""))
                if ksr_off is None:
                    for ref in f.ksr:
                        self._ksr_ref(ref)
        self._route_types(ksr_off is None)
        self._unused()
        self._undefined_calls()
        return sorted(set(self.problems), key=lambda p: (p.file, p.line, p.column, p.message))

    def _unique(self, name: str) -> _Fn | None:
        ds = self.defs.get(name, [])
        return ds[0].fn if len(ds) == 1 else None

    def _resolve(self, target: str | _Binding | _Fn) -> _Fn | None:
        if isinstance(target, _Fn):
            return target
        if isinstance(target, _Binding):
            return target.funcs[0] if len(target.funcs) == 1 and not target.reassigned else None
        return self._unique(target)

    def _open(self) -> str | None:
        """Why globals may exist that the checks cannot see, or None."""
        if not self.open_reasons:
            return None
        reason, path, line, _ = self.open_reasons[0]
        return f"{reason} at {path}:{line}"

    def _redefinitions(self) -> None:
        for name, ds in self.defs.items():
            fns = [d for d in ds if d.fn is not None]
            if len(ds) > 1 and fns:
                first = ds[0]
                for d in ds[1:]:
                    self.add(d.file, d.line, d.col,
                             f"global {name} is set again (first at {first.file}:{first.line}): "
                             "route-type checks do not follow calls to it",
                             "warning", "redefined")

    def _entry_points(self) -> None:
        main = self.files[0].path
        for name, rtype, required in ((self.request_route, R.REQUEST, True),
                                      (self.reply_route, R.CORE_REPLY, False)):
            ds = self.defs.get(name)
            if not ds:
                if required:
                    self._missing(main, 1, 1, f"no function {name}() (the request route "
                                              "entry point)")
                continue
            f = self._unique(name)
            if f is not None:
                self.seeds.append(_Seed(f, rtype, f"{rtype.label} entry point"))
        for name, rtype, origin in self.config_routes:
            if name not in self.defs:
                self._missing(main, 1, 1, f"{origin} names {name}(), which is not defined")
                continue
            f = self._unique(name)
            if f is not None:
                self.seeds.append(_Seed(f, rtype, f"{rtype.label}, named by {origin}"))

    def _missing(self, file: str, line: int, col: int, message: str) -> None:
        why = self._open()
        if why is None:
            self.add(file, line, col, message, "error", "missing")
        else:
            self.add(file, line, col, f"{message}; it may be defined dynamically ({why})",
                     "warning", "missing")

    # -- KSR references -----------------------------------------------------------------

    def _waiting_exports(self) -> set[str]:
        quals: dict[str, Export] = {}
        for m in self.modules.values():
            for e in m.exports:
                quals[_qual(m.name, e.name)] = e
        waits = {q for q, e in quals.items() if e.is_async}
        for q, e in quals.items():
            if e.lua is not None and any(f"KSR.{a}.{b}" in waits
                                         for a, b in re.findall(r"KSR\.(\w+)\.(\w+)", e.lua)):
                waits.add(q)
        return waits

    def _lookup(self, ref: _KsrRef) -> tuple[Module, Export] | None:
        path = ref.path
        first = path[0]
        mod = self.modules.get(first) if first else None
        file, line, col = ref.fn.file, ref.line, ref.col
        if mod is not None:
            if len(path) == 1:
                return None
            e = mod.export(path[1])
            if e is None:
                if path[:2] not in self.ksr_assigned:
                    names = [x.name for x in mod.exports]
                    self.add(file, line, col, f"unknown function KSR.{first}.{path[1]}"
                             + _did_you_mean(path[1], names, f"KSR.{first}."),
                             check="unknown")
                return None
            if len(path) > 2:
                self.add(file, line, col, f"KSR.{first}.{path[1]} is a function: "
                         f".{path[2]} cannot be read from it", check="unknown")
                return None
            return mod, e
        core = self.modules.get("")
        e = core.export(first) if core is not None else None
        if e is None:
            if path[:1] not in self.ksr_assigned:
                names = [m for m in self.modules if m]
                if core is not None:
                    names += [x.name for x in core.exports]
                self.add(file, line, col, f"unknown module or function KSR.{first}"
                         + _did_you_mean(first, names, "KSR."), check="unknown")
            return None
        assert core is not None
        if len(path) > 1:
            self.add(file, line, col, f"KSR.{first} is a function: .{path[1]} cannot be "
                     "read from it", check="unknown")
            return None
        return core, e

    def _ksr_ref(self, ref: _KsrRef) -> None:
        found = self._lookup(ref)
        if found is None or ref.args is None:
            return
        mod, e = found
        qual = _qual(mod.name, e.name)
        file, fn = ref.fn.file, ref.fn
        args = ref.args
        if e.lua is not None and not e.params:
            return  # KSR.x.exit(), KSR.x.drop(): Lua functions that ignore any argument
        # a Lua-implemented export is called directly, unchecked: a mismatch is a warning
        severity: Severity = "warning" if e.lua is not None else "error"
        nparams, required = len(e.params), e.required
        want = str(nparams) if required == nparams else f"{required} to {nparams}"
        n = len(args)
        open_end = bool(args) and _multi(args[-1])
        if open_end and n - 1 > nparams:
            self.add(file, ref.line, ref.col, f"{qual}() takes {want} argument(s), "
                     f"got at least {n - 1}", severity, "arity")
        elif not open_end and n != nparams and (n > nparams or n < required):
            got = f"got {n}" + (" (the method call ':' passes KSR's table as the first)"
                                if ref.method else "")
            self.add(file, ref.line, ref.col,
                     f"{qual}() takes {want} argument(s), {got}", severity, "arity")
        checked = args[:-1] if open_end else args
        for i, a in enumerate(checked[:nparams]):
            problem = _type_problem(e.params[i], _kind(a), _const(a), i < required)
            if problem is not None:
                what = "self (':' call)" if ref.method and i == 0 else f"argument {i + 1}"
                self.add(file, a.line, a.col, f"{qual}(): {what} {problem}", severity, "type")
        if mod.name == "pv" and args and _concatenation(args[0]):
            self.add(file, args[0].line, args[0].col,
                     f"{qual}(): the PV name is built at run time (..); each new name is "
                     "parsed again and is not cached (Kamailio leaks memory for each): use a "
                     "fixed name", "warning", "pv-name")
        for index, rtype in _ARMING.get((mod.name, e.name), ()):
            if index >= len(args) or (open_end and index >= n - 1):
                continue
            c = _const(args[index])
            if c is None or c.kind != "str":
                continue
            name = str(c.value)
            a = args[index]
            if not name:
                if not (mod.name == "async" and e.name == "launch" and index == 1):
                    self.add(file, a.line, a.col, f"{qual}(\"\"): an empty function name",
                             "warning", "missing")
                continue
            target = self._unique(name)
            if name not in self.defs:
                self._missing(file, a.line, a.col,
                              f"{qual}() arms {name}(), which is not defined")
            elif target is None:
                pass  # defined several times, or not as a function body: not followed
            elif rtype is None:  # async routes run in the caller's route
                self.edges.setdefault(fn, []).append(
                    (target, file, ref.line, ref.mask, f"via {qual}"))
            else:
                self.seeds.append(_Seed(target, rtype, f"{rtype.label}, armed at "
                                                       f"{file}:{ref.line} by {qual}"))

    # -- route types ----------------------------------------------------------------------

    def _route_types(self, ksr_checks: bool) -> None:
        """Breadth first from every seed, one route type at a time; then every KSR call
        in a function reached in a route type must allow it."""
        self.reached: dict[_Fn, RouteType] = {}
        for bit in RouteType:
            parent: dict[_Fn, tuple[_Fn | None, str, int, int, str]] = {}
            queue: deque[_Fn] = deque()
            for s in self.seeds:
                if s.rtype == bit and s.fn not in parent:
                    parent[s.fn] = (None, s.origin, 0, 0, "")
                    queue.append(s.fn)
            while queue:
                f = queue.popleft()
                self.reached[f] = self.reached.get(f, R(0)) | bit
                for g, file, line, mask, how in self.edges.get(f, ()):
                    if bit & mask and g not in parent:
                        parent[g] = (f, file, line, 0, how)
                        queue.append(g)
            if not ksr_checks:
                continue
            for f in parent:
                for ref in f.ksr:
                    if ref.args is None or not bit & ref.mask:
                        continue
                    found = self._lookup_quiet(ref)
                    if found is None:
                        continue
                    mod, e = found
                    qual = _qual(mod.name, e.name)
                    if not e.routes & bit:
                        self.add(f.file, ref.line, ref.col,
                                 f"{_path(f, parent)} calls {qual}(), which is not allowed "
                                 f"in {bit.label} (allowed in {e.routes.label})",
                                 check="route")
                    elif qual in self.waits and bit & _NO_WAIT:
                        self.add(f.file, ref.line, ref.col,
                                 f"{_path(f, parent)} calls {qual}(), which waits: a "
                                 f"{bit.label} cannot wait", check="wait")

    def _lookup_quiet(self, ref: _KsrRef) -> tuple[Module, Export] | None:
        path = ref.path
        mod = self.modules.get(path[0]) if path[0] else None
        if mod is not None:
            e = mod.export(path[1]) if len(path) == 2 else None
            return (mod, e) if e is not None else None
        core = self.modules.get("")
        e = core.export(path[0]) if core is not None and len(path) == 1 else None
        return (core, e) if core is not None and e is not None else None

    # -- warnings ---------------------------------------------------------------------------

    def _unused(self) -> None:
        if self._open() is not None or any(fi.dynamic_calls for fi in self.files):
            return
        mentioned: set[str] = set()
        for fi in self.files:
            mentioned.update(fi.reads)
            mentioned.update(fi.strings)
        for name in self.defs:
            f = self._unique(name)
            if (f is None or name in mentioned or f in self.reached
                    or name in (self.request_route, self.reply_route)):
                continue
            self.add(f.file, f.line, f.col, f"function {name}() is never called or armed",
                     "warning", "unused")

    def _undefined_calls(self) -> None:
        if self._open() is not None:
            return
        for fi in self.files:
            for f in (fi.main, *fi.functions):
                for target, line, col, _mask in f.calls:
                    if (isinstance(target, str) and target not in self.defs
                            and target not in _LUA_GLOBALS):
                        self.add(f.file, line, col, f"call of {target}(), which is not "
                                 "defined (a nil value)", "warning", "undefined")


def _qual(module: str, name: str) -> str:
    return f"KSR.{module}.{name}" if module else f"KSR.{name}"


def _did_you_mean(name: str, names: Iterable[str], prefix: str) -> str:
    close = difflib.get_close_matches(name, list(names), n=1)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def _int_ok(text: str) -> bool:
    try:
        int(text)  # the engine's own conversion (engine._to_int)
    except ValueError:
        return False
    return True


def _type_problem(param: str, kind: str, c: Const | None, required: bool) -> str | None:
    """What is certainly wrong with a constant argument, following the engine's
    conversions (script/engine.py: numeric strings pass as integers, numbers as strings)."""
    if kind == "nil":
        if not required:
            return None
        return f"must be {'an integer' if param == 'int' else 'a string'}, got nil"
    if param == "int":
        if kind == "str" and c is not None and not _int_ok(str(c.value)):
            return f"must be an integer, got the string {str(c.value)!r}"
        if (kind == "num" and c is not None and isinstance(c.value, float)
                and not c.value.is_integer()):
            return f"must be an integer, got {c.value!r}"
        if kind in ("bool", "table", "function"):
            return f"must be an integer, got a {_LUA_KIND[kind]}"
    elif param == "str" and kind in ("bool", "table", "function"):
        return f"must be a string, got a {_LUA_KIND[kind]}"
    return None


_LUA_KIND: Final = {"bool": "boolean", "table": "table", "function": "function"}


def _path(f: _Fn, parent: dict[_Fn, tuple[_Fn | None, str, int, int, str]]) -> str:
    """``seed (failure_route, armed at x.lua:12 ...) -> helper (x.lua:30) -> f (x.lua:41)``"""
    steps: list[str] = []
    cur: _Fn | None = f
    seen: set[_Fn] = set()
    while cur is not None and cur not in seen:
        seen.add(cur)
        prev, where, line, _, how = parent[cur]
        if prev is None:
            steps.append(f"{cur.name} ({where})")
        else:
            via = f", {how}" if how else ""
            steps.append(f"{cur.name} ({where}:{line}{via})")
        cur = prev
    return " -> ".join(reversed(steps))


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------


def _analyze(path: str, modules: dict[str, Module]) -> _FileInfo:
    source = Path(path).read_bytes().decode("utf-8", errors="surrogateescape")
    return _Walker(path, modules).walk(parse(source))


def _find_module(name: str, dirs: Sequence[str]) -> str | None:
    rel = name.replace(".", "/")
    for d in dirs:
        for candidate in (Path(d) / f"{rel}.lua", Path(d) / rel / "init.lua"):
            if candidate.is_file():
                return str(candidate)
    return None


def check_routes(
    path: str,
    modules: Iterable[Module],
    *,
    request_route: str = "ksr_request_route",
    reply_route: str = "ksr_reply_route",
    lua_path: Iterable[str] = (),
    config_routes: Iterable[tuple[str, RouteType, str]] = (),
) -> list[Problem]:
    """Check the routes file ``path`` (and the Lua files it ``require``s from ``lua_path``
    and the packaged lua/ directory) against the export tables of ``modules``.

    ``config_routes`` are the functions the config names as routes (rtimer's
    ``exec``): ``(name, route type, where it is named)``; each must exist, and is checked
    in that route type.

    Returns the problems sorted by file and position; severity "error" for what will
    certainly fail at run time, "warning" for what may."""
    mods = {m.name: m for m in modules}
    try:
        main = _analyze(path, mods)
    except OSError as exc:
        return [Problem(path, 1, 1, f"cannot read the routes: {exc.strerror or exc}",
                        check="read")]
    except LuaSyntaxError as exc:
        return [Problem(path, exc.line, exc.col, f"syntax error: {exc.message}",
                        check="syntax")]
    problems: list[Problem] = []
    files = [main]
    dirs = [*lua_path, str(packaged_lua_dir())]
    seen: set[str] = set()
    queue = deque([main])
    while queue:
        fi = queue.popleft()
        for name, line, col in fi.requires:
            if name in seen:
                continue
            seen.add(name)
            found = _find_module(name, dirs)
            if found is None:
                fi.open_reasons.append((f"require({name!r}) is not a file of the Lua path",
                                        line, col))
                continue
            if any(Path(f.path).resolve() == Path(found).resolve() for f in files):
                continue
            try:
                sub = _analyze(found, mods)
            except (OSError, LuaSyntaxError) as exc:
                problems.append(Problem(fi.path, line, col,
                                        f"cannot check {found}: {exc}", "warning", "syntax"))
                fi.open_reasons.append((f"require({name!r}) cannot be checked", line, col))
                continue
            files.append(sub)
            queue.append(sub)
    checker = _Checker(mods, request_route, reply_route, files, tuple(config_routes))
    return sorted(set(problems) | set(checker.run()),
                  key=lambda p: (p.file != path, p.file, p.line, p.column, p.message))
