"""The SQL guard: only one read statement over the allowed datasets gets through, checked with a real
ClickHouse-dialect parser (sqlglot) before anything runs.

Allowed (an allow-list, not a deny-list):

- exactly one statement: ``SELECT``, ``WITH ... SELECT`` (CTEs, scalar ``WITH expr AS name``, ``RECURSIVE``),
  ``UNION`` / ``INTERSECT`` / ``EXCEPT`` of those, optionally in parentheses;
- ``FROM`` / ``JOIN`` sources that are plain tables or subqueries (``ARRAY JOIN`` of an expression too);
- tables that are allowed datasets, written as the dataset name (``sales_data``) or as the real table
  (``modelbus.sales_data``), and names of CTEs defined in the statement;
- any function except those listed in :data:`DENIED_FUNCTIONS`.

Refused, with a reason the user and the model can act on:

- anything that does not parse, more than one statement (a second one hidden after a comment included),
  and statements over :attr:`max_chars`;
- every other statement kind: DDL, DML, ``SET``, ``SYSTEM``, ``KILL``, ``OPTIMIZE``, ``ATTACH`` /
  ``DETACH``, ``GRANT``, ``EXPLAIN``, ``DESCRIBE``, ``SHOW``, ``USE``, ...;
- table functions of every kind (``file``, ``url``, ``s3``, ``remote``, ``numbers``, ``merge``, ...),
  ``VALUES`` lists, other databases' tables (``system.*``, ``information_schema.*`` included) and any table
  not in the allowed set;
- ``SETTINGS``, ``FORMAT``, ``INTO OUTFILE`` / ``SELECT INTO`` and ``FOR UPDATE`` clauses, and query
  parameters (``{name:Type}``, ``?``);
- ``x IN table`` (ClickHouse reads a table there): write ``x IN (SELECT ... FROM table)``;
- functions that reach outside the query or the allowed tables, read server state or stall:
  ``file``/``url`` and every table-function name used as a function, ``sleep``/``sleepEachRow``,
  ``dictGet*``/``joinGet*``/``hasColumnInTable`` (they read a table named by a string), the function
  forms of ``IN`` (``globalIn``, ...), settings and host introspection (``getSetting``, ``hostName``,
  ``filesystem*``, ``getMacro``, ...), ``generateSerialID`` (writes to Keeper), and internal ``__*``
  functions.

What runs is what was checked: the statement is regenerated from the parsed tree (comments dropped), so a
comment or quoting trick that sqlglot and ClickHouse read differently cannot smuggle anything through. In
that copy every dataset reference is rewritten to its real ``database.table`` (aliased to the name written),
and the reader runs with an empty sandbox database as its current one, so a name this guard did not see as
a table cannot reach a real table either. Resource-hungry statements that pass (a huge result, a cross
join) are stopped by the reader's limits (``clickhouse.py``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import msgspec
import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, SqlglotError

from modelbus.runtime.clickhouse.names import TableRef

__all__ = (
    "DENIED_FUNCTIONS",
    "TABLE_FUNCTIONS",
    "Allowed",
    "Refused",
    "Verdict",
    "check",
    "clean_model_sql",
)

DIALECT = "clickhouse"

# fmt: off
_TABLE_FUNCTION_NAMES = (
    "file", "fileCluster", "url", "urlCluster", "s3", "s3Cluster", "hdfs", "hdfsCluster", "remote",
    "remoteSecure", "cluster", "clusterAllReplicas", "mysql", "postgresql", "jdbc", "odbc", "executable",
    "input", "azureBlobStorage", "azureBlobStorageCluster", "gcs", "iceberg", "icebergS3", "icebergAzure",
    "icebergHDFS", "icebergLocal", "icebergCluster", "deltaLake", "deltaLakeCluster", "deltaLakeAzure",
    "hudi", "hudiCluster", "mongodb", "redis", "sqlite", "dictionary", "merge", "numbers", "numbers_mt",
    "zeros", "zeros_mt", "generateRandom", "generate_series", "generateSeries", "values", "view",
    "viewIfPermitted", "viewExplain", "null", "format", "loop", "fuzzJSON", "fuzzQuery", "arrowFlight",
    "arrowflight", "hive", "paimon", "ytsaurus", "timeSeriesData", "timeSeriesMetrics", "timeSeriesTags",
    "prometheusQuery", "prometheusQueryRange", "mergeTreeIndex", "mergeTreeProjection",
    "mergeTreeAnalyzeIndexes", "primes", "python",
)
# fmt: on
TABLE_FUNCTIONS = frozenset(name.lower() for name in _TABLE_FUNCTION_NAMES)

# fmt: off
_DENIED_FUNCTION_NAMES = (
    "sleep", "sleepEachRow", "joinGet", "joinGetOrNull", "hasColumnInTable", "in", "notIn", "globalIn",
    "globalNotIn", "nullIn", "notNullIn", "globalNullIn", "globalNotNullIn", "inIgnoreSet",
    "notInIgnoreSet", "globalInIgnoreSet", "globalNotInIgnoreSet", "getSetting", "getSettingOrDefault",
    "getServerSetting", "getMergeTreeSetting", "getMacro", "getServerPort", "hostName", "hostname", "fqdn",
    "tcpPort", "serverUUID", "uptime", "buildId", "getOSKernelVersion", "displayName",
    "filesystemAvailable", "filesystemCapacity", "filesystemUnreserved", "filesystemFree",
    "filesystemUsed", "zookeeperSessionUptime", "getClientHTTPHeader", "currentProfiles",
    "enabledProfiles", "defaultProfiles", "currentRoles", "enabledRoles", "defaultRoles", "currentUser",
    "user", "authenticatedUser", "addressToLine", "addressToLineWithInlines", "addressToSymbol",
    "demangle", "generateSerialID", "transactionID", "transactionLatestSnapshot",
    "transactionOldestSnapshot", "catboostEvaluate", "modelEvaluate", "evalMLMethod",
)
# fmt: on
DENIED_FUNCTIONS = TABLE_FUNCTIONS | frozenset(name.lower() for name in _DENIED_FUNCTION_NAMES)
_DENIED_PREFIXES = ("dict", "__")

# Statement-level clauses and nodes that never belong in a read-only question.
_REFUSED_NODES: tuple[tuple[type[exp.Expr], str], ...] = tuple(
    (node, why)
    for name, why in (
        ("Into", "SELECT ... INTO is not allowed"),
        ("Lock", "FOR UPDATE / locking clauses are not allowed"),
        ("Values", "VALUES lists are not allowed; read from the datasets"),
        ("Placeholder", "query parameters are not supported; write the values into the SQL"),
        ("Parameter", "query parameters are not supported; write the values into the SQL"),
        ("Command", "only SELECT statements are allowed"),
        ("DDL", "only SELECT statements are allowed"),
        ("DML", "only SELECT statements are allowed"),
        ("Drop", "only SELECT statements are allowed"),
        ("Alter", "only SELECT statements are allowed"),
        ("Set", "SET is not allowed"),
        ("Use", "USE is not allowed"),
        ("Describe", "only SELECT statements are allowed"),
        ("Lateral", "LATERAL is not allowed"),
        ("Unnest", "UNNEST is not allowed; use arrayJoin or ARRAY JOIN"),
    )
    if isinstance(node := getattr(exp, name, None), type)
)

_FENCE = re.compile(r"```[ \t]*(?:[A-Za-z0-9_+-]+)?[ \t]*\r?\n?(.*?)(?:```|\Z)", re.DOTALL)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SQL_START = re.compile(r"\s*(select|with|\()", re.IGNORECASE)
_FIRST_WORD = re.compile(r"\s*([A-Za-z]+)\b")
# fmt: off
_OTHER_STATEMENTS = frozenset((
    "INSERT", "UPDATE", "DELETE", "DROP", "CREATE", "ALTER", "TRUNCATE", "RENAME", "EXCHANGE", "UNDROP",
    "SET", "SYSTEM", "KILL", "OPTIMIZE", "ATTACH", "DETACH", "GRANT", "REVOKE", "EXPLAIN", "DESCRIBE",
    "DESC", "SHOW", "USE", "BACKUP", "RESTORE", "CHECK", "WATCH", "MOVE", "EXISTS",
))
# fmt: on


class Allowed(msgspec.Struct, frozen=True):
    """A statement that passed: ``sql`` as the model wrote it, normalized (what users see and what
    ``application/sql`` returns); ``executable``, the same statement with dataset names bound to their
    real tables (what runs); ``datasets``, the datasets it reads."""

    sql: str
    executable: str
    datasets: tuple[str, ...]


class Refused(msgspec.Struct, frozen=True):
    """A statement that did not pass, and why (in words the user and the model can act on)."""

    reason: str
    sql: str


Verdict = Allowed | Refused


class _Refusal(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def clean_model_sql(text: str) -> str:
    """The SQL in a model's answer: the first fenced code block if there is one, without a leading
    ``--`` glued to the statement, surrounding whitespace and trailing semicolons.

    Unlike Spice's ``clean_model_based_sql`` this does not cut at the first ``;``: a second statement is
    left in place so the guard refuses it instead of silently running half of what the model wrote.
    """
    text = text.strip()
    fence = _FENCE.search(text)
    if fence:
        text = fence.group(1).strip()
    if text.startswith("--") and _SQL_START.match(text[2:]):
        text = text[2:]
    text = text.strip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    return text


def check(sql: str, allowed: Mapping[str, TableRef], *, max_chars: int = 20_000) -> Verdict:
    """Check one model-written statement against the datasets it may read (``name -> real table``)."""
    cleaned = clean_model_sql(sql)
    try:
        return _check(cleaned, allowed, max_chars)
    except _Refusal as refusal:
        return Refused(reason=refusal.reason, sql=cleaned)


def _check(sql: str, allowed: Mapping[str, TableRef], max_chars: int) -> Allowed:
    if not sql:
        raise _Refusal("no SQL statement was given")
    if len(sql) > max_chars:
        raise _Refusal(f"the statement is longer than {max_chars} characters")
    root = _query(sql)
    ctes, used = _inspect(root, allowed)

    executable_tree = root.copy()
    for table in list(executable_tree.find_all(exp.Table)):
        target = _resolve(table, allowed, ctes)
        if target is not None:
            _bind(table, target[1])
    normalized = root.sql(dialect=DIALECT, comments=False)
    executable = executable_tree.sql(dialect=DIALECT, comments=False)
    # What runs is checked again as text: the generator must not have produced anything the checks
    # above did not see (a second statement, a function or table that was spelled differently).
    _inspect(_query(executable), allowed)
    return Allowed(sql=normalized, executable=executable, datasets=tuple(used))


def _query(sql: str) -> exp.Expr:
    root = _parse_one(sql)
    while isinstance(root, exp.Subquery) and isinstance(root.this, exp.Query):
        root = root.this
    if not isinstance(root, exp.Select | exp.SetOperation):
        raise _Refusal(f"only SELECT statements are allowed, not {_statement_kind(root)}")
    return root


def _inspect(root: exp.Expr, allowed: Mapping[str, TableRef]) -> tuple[set[str], list[str]]:
    """Check every node and table of a parsed query; the CTE names it defines and the datasets it reads."""
    ctes = {cte.alias_or_name for cte in root.find_all(exp.CTE) if cte.alias_or_name}
    for node in root.walk():
        _check_node(node)
    used: list[str] = []
    for table in root.find_all(exp.Table):
        target = _resolve(table, allowed, ctes)
        if target is not None and target[0] not in used:
            used.append(target[0])
    return ctes, used


def _parse_one(sql: str) -> exp.Expr:
    try:
        statements = [s for s in sqlglot.parse(sql, read=DIALECT) if s is not None]
    except ParseError as exc:
        first = _FIRST_WORD.match(sql)
        if first and first.group(1).upper() in _OTHER_STATEMENTS:
            raise _Refusal(f"only SELECT statements are allowed, not {first.group(1).upper()}") from exc
        raise _Refusal(f"the SQL does not parse as ClickHouse SQL: {_parse_error(exc)}") from exc
    except (SqlglotError, RecursionError, ValueError) as exc:
        detail = _ANSI.sub("", str(exc)).splitlines()[0] if str(exc) else type(exc).__name__
        raise _Refusal(f"the SQL does not parse as ClickHouse SQL: {detail}") from exc
    if len(statements) != 1:
        raise _Refusal(f"exactly one statement is allowed, found {len(statements)}")
    return statements[0]


def _parse_error(exc: ParseError) -> str:
    if exc.errors:
        first = exc.errors[0]
        description = first.get("description") or "syntax error"
        line, col = first.get("line"), first.get("col")
        where = f" (line {line}, column {col})" if line is not None and col is not None else ""
        return f"{description}{where}"
    return _ANSI.sub("", str(exc)).splitlines()[0]


def _statement_kind(node: exp.Expr) -> str:
    if isinstance(node, exp.Command):
        return str(node.this).upper()
    return node.key.upper()


def _check_node(node: exp.Expr) -> None:
    for node_type, why in _REFUSED_NODES:
        if isinstance(node, node_type):
            raise _Refusal(why)
    if node.args.get("settings"):
        raise _Refusal("SETTINGS clauses are not allowed (limits are fixed by the server)")
    if isinstance(node, exp.Query) and node.args.get("format"):
        raise _Refusal("FORMAT clauses are not allowed; ask for a format with the Accept header")
    if isinstance(node, exp.Func):
        _check_function(node)
    if isinstance(node, exp.In):
        _check_in(node)
    if isinstance(node, exp.From):
        _check_source(node.this)
    if isinstance(node, exp.Join) and str(node.args.get("kind") or "").upper() != "ARRAY":
        _check_source(node.this)


def _function_name(node: exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return node.name
    return node.sql_name()


def _check_function(node: exp.Func) -> None:
    name = _function_name(node)
    lowered = name.lower()
    if lowered in DENIED_FUNCTIONS or lowered.startswith(_DENIED_PREFIXES):
        raise _Refusal(f"the function {name}() is not allowed")


def _check_in(node: exp.In) -> None:
    field = node.args.get("field")
    expressions = node.args.get("expressions") or []
    if field is not None or (len(expressions) == 1 and isinstance(expressions[0], exp.Column)):
        raise _Refusal("IN <table> is not allowed; write IN (SELECT column FROM table)")


def _check_source(source: exp.Expr | None) -> None:
    if isinstance(source, exp.Subquery):
        return
    if isinstance(source, exp.Table):
        if isinstance(source.this, exp.Identifier):
            return
        if isinstance(source.this, exp.Func):
            raise _Refusal(f"table functions are not allowed: {_function_name(source.this)}()")
    raise _Refusal("only tables and subqueries can be read")


def _resolve(
    table: exp.Table, allowed: Mapping[str, TableRef], ctes: set[str]
) -> tuple[str, TableRef] | None:
    """The dataset a table reference reads (``None`` for a CTE); refuses anything else."""
    if not isinstance(table.this, exp.Identifier):
        raise _Refusal("table functions are not allowed")
    name, database = table.name, table.db
    if table.catalog:
        raise _Refusal(f"three-part table names are not allowed: {table.sql(dialect=DIALECT)}")
    if database.lower() in ("system", "information_schema"):
        raise _Refusal(f"system tables are not allowed: {database}.{name}")
    if not database:
        if name in ctes:
            return None
        if name in allowed:
            return name, allowed[name]
    else:
        for dataset, ref in allowed.items():
            if (ref.database, ref.table) == (database, name):
                return dataset, ref
    written = f"{database}.{name}" if database else name
    choices = ", ".join(sorted(allowed)) or "none"
    raise _Refusal(f"the table {written} is not one of the datasets that may be queried ({choices})")


def _bind(table: exp.Table, ref: TableRef) -> None:
    """Point a table reference at its real table, keeping the name it was written with as its alias."""
    if not table.alias:
        table.set("alias", exp.TableAlias(this=exp.to_identifier(table.name, quoted=True)))
    table.set("db", exp.to_identifier(ref.database, quoted=True))
    table.set("this", exp.to_identifier(ref.table, quoted=True))
