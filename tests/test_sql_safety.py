"""SQL is sent with bound parameters only: no statement text is built from run-time values.

Every call that sends SQL (asyncpg's execute, executemany, fetch, fetchrow, fetchval,
cursor, prepare, copy_from_query and the ``where`` of the other copy_* methods, and the
embedded server's psql) in eventindex/, tools/ and bench/ is found by parsing the code, and its
SQL must be a constant (a literal, an UPPER_CASE constant, ``queries.X``) or be built
only from constants and ``ident()``/``literal()`` (for the utility statements
PostgreSQL cannot bind parameters in). A local variable passed as the SQL is traced to
its assignments in the same function. The checker is tested on small snippets below, so
it is seen to fail.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from eventindex.queries import ident, literal

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("eventindex", "tools", "bench")

# Methods whose first argument (or keyword query/command/sql) is SQL text.
SQL_FIRST = frozenset(
    {
        "execute",
        "executemany",
        "fetch",
        "fetchrow",
        "fetchval",
        "cursor",
        "prepare",
        "copy_from_query",
        "psql",
    }
)
SQL_KEYWORDS = ("query", "command", "sql")
# The other copy_* methods take a table name (asyncpg quotes it) and raw SQL in `where`.
COPY_PREFIX = "copy_"
QUOTERS = frozenset({"ident", "literal"})
CONSTANT = re.compile(r"_?[A-Z][A-Z0-9_]*")


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.why}"


def _name_of(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _is_constant_ref(node: ast.expr) -> bool:
    """A literal, or a name or attribute spelled as a constant (UPPER_CASE)."""
    if isinstance(node, ast.Constant):
        return True
    name = _name_of(node)
    return name is not None and CONSTANT.fullmatch(name) is not None


def _is_text(node: ast.expr) -> bool:
    return isinstance(node, ast.JoinedStr) or (
        isinstance(node, ast.Constant) and isinstance(node.value, str)
    )


def _is_quoter(node: ast.expr) -> bool:
    """A call of ident() or literal() (or queries.ident(), queries.literal())."""
    return isinstance(node, ast.Call) and _name_of(node.func) in QUOTERS


def _assigns(node: ast.AST, name: str) -> bool:
    """Whether ``node`` assigns a value to the variable ``name``."""
    if isinstance(node, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
    if isinstance(node, ast.AnnAssign) and node.value is None:
        return False
    return (
        isinstance(node, ast.AnnAssign | ast.NamedExpr | ast.AugAssign)
        and isinstance(node.target, ast.Name)
        and node.target.id == name
    )


class Checker:
    def __init__(self, tree: ast.Module, path: str) -> None:
        self.path = path
        self.tree = tree
        self.parents: dict[ast.AST, ast.AST] = {}
        for parent in ast.walk(tree):
            for child in ast.iter_child_nodes(parent):
                self.parents[child] = parent
        self.findings: list[Finding] = []

    # --- where SQL is sent ---------------------------------------------------------

    def sql_arguments(self, call: ast.Call) -> list[ast.expr]:
        if not isinstance(call.func, ast.Attribute):
            return []
        method = call.func.attr
        found: list[ast.expr] = []
        if method in SQL_FIRST:
            if call.args and not isinstance(call.args[0], ast.Starred):
                found.append(call.args[0])
            found += [k.value for k in call.keywords if k.arg in SQL_KEYWORDS]
        if method.startswith(COPY_PREFIX):
            found += [k.value for k in call.keywords if k.arg == "where"]
        return found

    def run(self) -> list[Finding]:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Call):
                for arg in self.sql_arguments(node):
                    why = self.unsafe(arg, set())
                    if why is not None:
                        method = _name_of(node.func)
                        self.report(arg, f"SQL of {method}() built at run time: {why}")
        self.check_module_constants()
        return self.findings

    def report(self, node: ast.AST, why: str) -> None:
        self.findings.append(Finding(self.path, getattr(node, "lineno", 0), why))

    # --- what SQL is made of ---------------------------------------------------------

    def unsafe(self, node: ast.expr, seen: set[str]) -> str | None:
        """Why ``node`` is SQL built from run-time values, or None if it is not."""
        src = ast.unparse(node)
        if _is_constant_ref(node) or _is_quoter(node):
            return None
        if isinstance(node, ast.JoinedStr):
            for part in node.values:
                if isinstance(part, ast.FormattedValue) and not (
                    _is_quoter(part.value) or _is_constant_ref(part.value)
                ):
                    return (
                        f"f-string interpolates {ast.unparse(part.value)} (use ident()/literal())"
                    )
            return None
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.Mod):
                return f"%-formatting: {src}"
            if isinstance(node.op, ast.Add):
                for side in (node.left, node.right):
                    if not self.is_constant_built(side):
                        return f"concatenation with {ast.unparse(side)}"
                    why = self.unsafe(side, seen)
                    if why is not None:
                        return why
                return None
            return f"operator {type(node.op).__name__}: {src}"
        if isinstance(node, ast.Call):
            return self.unsafe_call(node, seen)
        if isinstance(node, ast.IfExp):
            return self.unsafe(node.body, seen) or self.unsafe(node.orelse, seen)
        if isinstance(node, ast.Name):
            return self.unsafe_variable(node, seen)
        # Attributes (queries.X, m.sql), subscripts, parameters: not built here.
        return None

    def is_constant_built(self, node: ast.expr) -> bool:
        """May take part in a concatenation: constants, quoters, formatted templates."""
        if _is_constant_ref(node) or _is_quoter(node) or isinstance(node, ast.JoinedStr):
            return True
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self.is_constant_built(node.left) and self.is_constant_built(node.right)
        return (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("format", "format_map")
        )

    def unsafe_call(self, call: ast.Call, seen: set[str]) -> str | None:
        func = call.func
        if isinstance(func, ast.Attribute) and func.attr in ("format", "format_map"):
            if not _is_constant_ref(func.value):
                return f".format() of {ast.unparse(func.value)}, not of a constant template"
            for value in [*call.args, *(k.value for k in call.keywords)]:
                if not _is_quoter(value):
                    return f".format() with {ast.unparse(value)} (use ident()/literal())"
            return None
        # Any other call (queries.private_stage(X), ...) is as safe as what it is given.
        for value in [*call.args, *(k.value for k in call.keywords)]:
            if isinstance(value, ast.Starred):
                continue
            why = self.unsafe(value, seen)
            if why is not None:
                return why
        return None

    def unsafe_variable(self, name: ast.Name, seen: set[str]) -> str | None:
        if name.id in seen:
            return None
        seen = seen | {name.id}
        scope = self.scope_of(name)
        for node in ast.walk(scope):
            if not _assigns(node, name.id):
                continue
            assert isinstance(node, ast.Assign | ast.AnnAssign | ast.NamedExpr | ast.AugAssign)
            assert node.value is not None
            if isinstance(node, ast.AugAssign):
                if not isinstance(node.op, ast.Add):
                    return f"{name.id} (line {node.lineno}) is {type(node.op).__name__}-assigned"
                if not self.is_constant_built(node.value):
                    extra = ast.unparse(node.value)
                    return f"{name.id} (line {node.lineno}) is extended with {extra}"
            why = self.unsafe(node.value, seen)
            if why is not None:
                return f"{name.id} (line {node.lineno}) is {why}"
        return None

    def scope_of(self, node: ast.AST) -> ast.AST:
        current: ast.AST | None = node
        while current is not None:
            current = self.parents.get(current)
            if isinstance(current, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                return current
        return self.tree

    # --- module constants --------------------------------------------------------------

    def check_module_constants(self) -> None:
        """UPPER_CASE module constants are trusted as SQL above: f-strings in them may
        interpolate only other module constants, and they are never %-formatted,
        .format()ed or concatenated with anything but constants."""
        defined: set[str] = set()
        for stmt in self.tree.body:
            targets: list[ast.expr] = []
            value: ast.expr | None = None
            if isinstance(stmt, ast.Assign):
                targets, value = stmt.targets, stmt.value
            elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                targets, value = [stmt.target], stmt.value
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            if value is not None and any(CONSTANT.fullmatch(n) for n in names):
                for node in ast.walk(value):
                    why = self.unsafe_in_constant(node, defined)
                    if why is not None:
                        self.report(node, f"constant {names[0]}: {why}")
            defined.update(names)

    def unsafe_in_constant(self, node: ast.AST, defined: set[str]) -> str | None:
        if isinstance(node, ast.FormattedValue):
            value = node.value
            if not (isinstance(value, ast.Name) and CONSTANT.fullmatch(value.id)):
                return f"f-string interpolates {ast.unparse(value)}, not a module constant"
            if value.id not in defined:
                return f"f-string interpolates {value.id}, not defined above in this module"
        # Arithmetic in constants is fine; only text is looked at.
        if not isinstance(node, ast.BinOp):
            pass
        elif isinstance(node.op, ast.Mod) and (_is_text(node.left) or _is_constant_ref(node.left)):
            return f"%-formatting: {ast.unparse(node)}"
        elif isinstance(node.op, ast.Add) and (_is_text(node.left) or _is_text(node.right)):
            for side in (node.left, node.right):
                if not (_is_constant_ref(side) or isinstance(side, ast.BinOp | ast.JoinedStr)):
                    return f"concatenation with {ast.unparse(side)}"
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("format", "format_map")
        ):
            return f".format() at import: {ast.unparse(node)}"
        return None


def check_source(source: str, path: str = "<snippet>") -> list[Finding]:
    return Checker(ast.parse(source, path), path).run()


def scanned_files() -> list[Path]:
    return sorted(p for d in SCANNED for p in (ROOT / d).rglob("*.py"))


# --- the code base ---------------------------------------------------------------------


def test_no_sql_built_from_run_time_values() -> None:
    findings: list[Finding] = []
    for path in scanned_files():
        findings += check_source(path.read_text(), str(path.relative_to(ROOT)))
    assert not findings, "string-built SQL:\n" + "\n".join(map(str, findings))


def test_the_scan_sees_the_sql_calls() -> None:
    """The checker is not vacuous: it finds the calls it is meant to look at."""
    calls = 0
    for path in scanned_files():
        tree = ast.parse(path.read_text())
        checker = Checker(tree, str(path))
        calls += sum(
            1 for n in ast.walk(tree) if isinstance(n, ast.Call) and checker.sql_arguments(n)
        )
    assert calls > 100


# --- the checker on snippets ----------------------------------------------------------

# A function with a connection (c), a server (server) and a run-time value (t).
F = "async def f(c, server, t):\n    "

BAD = {
    "f-string": F + "await c.execute(f'SELECT * FROM {t}')\n",
    "%": F + "await c.fetch('SELECT %s' % t)\n",
    ".format(x)": F + "await c.execute(queries.X.format(name=t))\n",
    "positional .format": F + "server.psql('CREATE DATABASE {}'.format(t))\n",
    ".format of a variable": F + "await c.execute(t.format(name=ident(t)))\n",
    "+": F + "await c.fetchval('SELECT ' + t)\n",
    "+ of constant and variable": F + "await c.fetchrow(queries.X + t)\n",
    "variable": F + "sql = f'DROP TABLE {t}'\n    await c.execute(sql)\n",
    "+=": F + "sql = 'SELECT 1'\n    sql += t\n    await c.execute(sql)\n",
    "keyword": F + "await c.fetch(query=f'SELECT {t}')\n",
    "cursor": F + "c.cursor('SELECT ' + t)\n",
    "copy where": F + "await c.copy_to_table('e', source=b, where=f'x={t}')\n",
    "copy_from_query": F + "await c.copy_from_query(f'SELECT {t}', output=o)\n",
    "executemany": F + "await c.executemany(f'INSERT INTO {t} VALUES ($1)', r)\n",
    "prepare": F + "await c.prepare('SELECT %(x)s' % {'x': t})\n",
    "f-string in a call": F + "await c.execute(queries.private_stage(f'{t}'))\n",
    "conditional": F + "await c.execute(queries.X if t else f'{t}')\n",
    "constant with run-time f-string": "import os\nX = f\"SELECT '{os.getcwd()}'\"\n",
    "constant interpolating a lower-case name": "x = 'a'\nSQL = f'SELECT {x}'\n",
    "constant interpolating an unknown constant": "SQL = f'SELECT {LATER}'\nLATER = '1'\n",
    "constant %-formatted": "A = 'x'\nSQL = 'SELECT %s' % A\n",
    "constant .format()ed": "A = 'x'\nSQL = 'SELECT {a}'.format(a=A)\n",
    "constant concatenated": "import os\nSQL = 'SELECT ' + os.sep\n",
}

GOOD = {
    "constant": F + "await c.execute('SELECT 1')\n",
    "queries.X": F + "await c.fetch(queries.GET_EVENT, t, 1)\n",
    "module constant": "SQL = 'SELECT 1'\n" + F + "await c.fetchval(SQL)\n",
    "ident() in an f-string": F + "await c.execute(f'CREATE DATABASE {ident(t)}')\n",
    "literal() in an f-string": F + "server.psql(f'SELECT {queries.literal(t)};')\n",
    ".format with quoters": (
        F + "await c.execute(queries.X.format(name=queries.ident(t), gid=literal(t)))\n"
    ),
    "+ of constants": F + "await c.execute(queries.X + ';' + ident(t))\n",
    "variable from constants": F + "sql = queries.A if t else queries.B\n    await c.fetch(sql)\n",
    "call of constants": F + "await c.execute(stage(queries.CREATE))\n",
    "parameter": "async def f(c, query, *args):\n    await c.fetch(query, *args)\n",
    "copy of a table": F + "await c.copy_to_table(t, source=b)\n",
    "constant f-string of constants": "_A = 'x'\nSQL = f'SELECT {_A}'\n",
    "arithmetic in a constant": "PAIRS = [(i % 4, i * 37 % 700 + 1) for i in range(9)]\n",
    "not SQL": "def f(t):\n    print(f'{t}')\n    return t.replace(f'{t}', '')\n",
}


@pytest.mark.parametrize("source", BAD.values(), ids=BAD.keys())
def test_checker_flags_built_sql(source: str) -> None:
    findings = check_source(source, "snippet.py")
    assert findings, source
    assert all(str(f).startswith("snippet.py:") for f in findings)


@pytest.mark.parametrize("source", GOOD.values(), ids=GOOD.keys())
def test_checker_accepts_constant_sql(source: str) -> None:
    assert check_source(source) == []


def test_checker_names_file_and_line() -> None:
    source = "async def f(conn, t):\n    x = 1\n    await conn.execute(f'SELECT {t}')\n"
    [finding] = check_source(source, "eventindex/x.py")
    assert str(finding).startswith("eventindex/x.py:3: ")
    assert "{t}" in str(finding) or " t " in str(finding)


# --- ident() and literal() --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ("events", '"events"'),
        ("Mixed Case", '"Mixed Case"'),
        ('a"b', '"a""b"'),
        ('"; DROP TABLE events; --', '"""; DROP TABLE events; --"'),
        ("it's", '"it\'s"'),
        ("back\\slash", '"back\\slash"'),
    ],
)
def test_ident(name: str, quoted: str) -> None:
    assert ident(name) == quoted


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        ("eventindex", "'eventindex'"),
        ("it's", "'it''s'"),
        ("'; DROP TABLE events; --", "'''; DROP TABLE events; --'"),
        ('say "hi"', "'say \"hi\"'"),
        ("back\\slash", "E'back\\\\slash'"),
        ("\\'; DROP TABLE x; --", "E'\\\\''; DROP TABLE x; --'"),
    ],
)
def test_literal(text: str, quoted: str) -> None:
    assert literal(text) == quoted


@pytest.mark.parametrize("bad", ["", "a\x00b"])
def test_ident_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="NUL"):
        ident(bad)


def test_literal_rejects_nul() -> None:
    with pytest.raises(ValueError, match="NUL"):
        literal("a\x00b")
    assert literal("") == "''"


async def test_quoting_round_trips_through_postgresql(server_url: str) -> None:
    """What PostgreSQL reads back is the text given, with either string syntax."""
    import asyncpg

    texts = ["plain", "it's", 'a"b', "back\\slash\\'", "ünï\ncode\t", "'; SELECT 1; --"]
    conn = await asyncpg.connect(server_url)
    try:
        for conforming in (
            "SET standard_conforming_strings = on",
            "SET standard_conforming_strings = off",
        ):
            await conn.execute(conforming)
            for text in texts:
                sql = f"SELECT {literal(text)} AS {ident(text)}"
                row = await conn.fetchrow(sql)
                assert row is not None
                assert list(row.items()) == [(text, text)], (conforming, text)
    finally:
        await conn.close()
