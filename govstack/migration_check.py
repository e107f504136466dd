"""Expand/contract: the release before a migration must run against the schema after it.

A blue/green deploy migrates while the old color still serves, and a
rollback runs the old version on the new schema. So a migration may only
*expand* the schema: new tables, new nullable (or defaulted) columns, new
indexes, new functions. A *contract* step (removing or renaming what the
previous release uses, changing a type, tightening what it may write) is
allowed only one release after the code stopped using the thing, and then
only through an entry of the reviewed allow-list (``app/contract-steps.toml``),
which names the migration, the rule and the target, and says why and who
reviewed it.

Each migration also runs as one transaction with its version row
(app/govstack_app/db.py): statements that cannot run in a transaction block,
or that end it, are refused outright (no allow-list entry lifts that).

The SQL is read by pglast (libpg_query, Postgres' own parser, offline), so
what is checked is what Postgres will execute, not a regex's guess.
`python -m govstack.migration_check [MIGRATIONS_DIR]` runs it (the quick tier does).
"""

from __future__ import annotations

import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS_DIR = REPO_ROOT / "app" / "govstack_app" / "migrations"
ALLOW_LIST = REPO_ROOT / "app" / "contract-steps.toml"

# What makes a step "contract", by rule name (the allow-list uses these names).
CONTRACT_RULES = {
    "drop": "drops what the previous release may use",
    "rename": "renames what the previous release names",
    "drop_column": "drops a column the previous release may read or write",
    "alter_column_type": "changes a column's type under the previous release",
    "set_not_null": "makes a column NOT NULL that has no default: the previous release may write NULL or omit it",
    "add_column_not_null": "adds a NOT NULL column without a default: the previous release's INSERTs omit it",
    "drop_default": "drops a default the previous release's INSERTs rely on",
    "add_constraint": "adds a constraint to an existing table: the previous release may write rows it rejects",
    "drop_constraint": "drops a constraint the previous release may rely on (ON CONFLICT needs a unique one)",
    "set_schema": "moves a table to another schema",
    "truncate": "deletes every row",
}
# Never allowed: the runner wraps each migration in one transaction.
TRANSACTION_RULES = {
    "transaction_control": "controls the transaction itself; each migration is one transaction with its version row",
    "not_in_transaction": "cannot run inside a transaction block; each migration is one",
}


class CheckError(ValueError):
    """A migration cannot be read, or the allow-list is malformed."""


@dataclass(frozen=True)
class Finding:
    migration: str
    line: int
    rule: str
    target: str

    def describe(self) -> str:
        why = CONTRACT_RULES.get(self.rule) or TRANSACTION_RULES[self.rule]
        return f"{self.migration}.sql:{self.line}: {self.rule} {self.target}: {why}"


@dataclass
class Schema:
    """Which columns have a default, as the migrations so far left them."""

    defaults: dict[str, dict[str, bool]] = field(default_factory=dict)

    def has_default(self, table: str, column: str) -> bool:
        return self.defaults.get(table, {}).get(column, False)


def _name(relation) -> str:
    return ".".join(part for part in (relation.schemaname, relation.relname) if part)


def _column_has_default(column) -> bool:
    from pglast.enums import ConstrType

    serial = {"serial", "bigserial", "smallserial", "serial2", "serial4", "serial8"}
    if column.typeName and column.typeName.names and column.typeName.names[-1].sval in serial:
        return True
    kinds = {constraint.contype for constraint in (column.constraints or ())}
    return bool(kinds & {ConstrType.CONSTR_DEFAULT, ConstrType.CONSTR_IDENTITY, ConstrType.CONSTR_GENERATED})


def _not_null(column) -> bool:
    from pglast.enums import ConstrType

    return column.is_not_null or any(c.contype == ConstrType.CONSTR_NOTNULL for c in (column.constraints or ()))


def _alter_table(statement, schema: Schema, created: set[str]) -> list[tuple[str, str]]:
    """(rule, target) of each contract command of one ALTER TABLE."""
    from pglast.enums import AlterTableType as At

    table = _name(statement.relation)
    if table in created:  # a table this very migration made: no release uses it yet
        return []
    columns = schema.defaults.setdefault(table, {})
    # Defaults set by this statement count for its SET NOT NULL.
    for cmd in statement.cmds:
        if cmd.subtype == At.AT_ColumnDefault and cmd.def_ is not None:
            columns[cmd.name] = True
    found = []
    for cmd in statement.cmds:
        target = f"{table}.{cmd.name}" if cmd.name else table
        if cmd.subtype == At.AT_DropColumn:
            found.append(("drop_column", target))
        elif cmd.subtype == At.AT_AlterColumnType:
            found.append(("alter_column_type", target))
        elif cmd.subtype == At.AT_SetNotNull and not columns.get(cmd.name, False):
            found.append(("set_not_null", target))
        elif cmd.subtype == At.AT_ColumnDefault and cmd.def_ is None:
            columns[cmd.name] = False
            found.append(("drop_default", target))
        elif cmd.subtype == At.AT_AddColumn:
            column = cmd.def_
            columns[column.colname] = _column_has_default(column)
            if _not_null(column) and not columns[column.colname]:
                found.append(("add_column_not_null", f"{table}.{column.colname}"))
        elif cmd.subtype in (At.AT_AddConstraint, At.AT_AddIndexConstraint):
            name = getattr(cmd.def_, "conname", None)
            found.append(("add_constraint", f"{table}.{name}" if name else table))
        elif cmd.subtype == At.AT_DropConstraint:
            found.append(("drop_constraint", target))
    return found


def check_sql(migration: str, sql: str, schema: Schema) -> list[Finding]:
    """Findings of one migration file; updates ``schema`` with what it defines."""
    from pglast import ast, parse_sql
    from pglast.parser import ParseError

    try:
        statements = parse_sql(sql)
    except ParseError as error:
        raise CheckError(f"{migration}.sql does not parse as Postgres SQL: {error}") from None
    created: set[str] = set()
    findings: list[Finding] = []
    for raw in statements:
        stmt = raw.stmt
        line = sql.encode()[: raw.stmt_location].count(b"\n") + 1
        rules: list[tuple[str, str]] = []
        if isinstance(stmt, ast.CreateStmt):
            table = _name(stmt.relation)
            created.add(table)
            schema.defaults[table] = {
                element.colname: _column_has_default(element)
                for element in (stmt.tableElts or ()) if isinstance(element, ast.ColumnDef)
            }
        elif isinstance(stmt, ast.AlterTableStmt):
            rules = _alter_table(stmt, schema, created)
        elif isinstance(stmt, ast.DropStmt):
            rules = [("drop", ".".join(getattr(p, "sval", "?") for p in (obj if isinstance(obj, tuple) else (obj,))))
                     for obj in stmt.objects or ()]
            if stmt.concurrent:
                rules.append(("not_in_transaction", "DROP … CONCURRENTLY"))
        elif isinstance(stmt, ast.RenameStmt):
            target = _name(stmt.relation) if stmt.relation else "?"
            rules = [("rename", f"{target}.{stmt.subname}" if stmt.subname else target)]
        elif isinstance(stmt, ast.AlterObjectSchemaStmt):
            rules = [("set_schema", _name(stmt.relation) if stmt.relation else "?")]
        elif isinstance(stmt, ast.TruncateStmt):
            rules = [("truncate", _name(relation)) for relation in stmt.relations]
        elif isinstance(stmt, ast.TransactionStmt):
            rules = [("transaction_control", "BEGIN/COMMIT/ROLLBACK/SAVEPOINT")]
        elif isinstance(stmt, ast.IndexStmt) and stmt.concurrent:
            rules = [("not_in_transaction", f"CREATE INDEX CONCURRENTLY {stmt.idxname or ''}".rstrip())]
        elif isinstance(stmt, ast.ReindexStmt) and any(p.defname == "concurrently" for p in stmt.params or ()):
            rules = [("not_in_transaction", "REINDEX … CONCURRENTLY")]
        elif isinstance(stmt, ast.VacuumStmt | ast.CreatedbStmt | ast.DropdbStmt | ast.AlterSystemStmt):
            rules = [("not_in_transaction", type(stmt).__name__.removesuffix("Stmt").upper())]
        findings += [Finding(migration, line, rule, target) for rule, target in rules]
    return findings


@dataclass(frozen=True)
class Allowed:
    migration: str
    rule: str
    target: str
    reason: str
    reviewed_by: str


def load_allow_list(path: Path) -> list[Allowed]:
    if not path.exists():
        return []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise CheckError(f"{path.name}: not TOML: {error}") from None
    entries = []
    for index, step in enumerate(data.get("step", [])):
        missing = [key for key in ("migration", "rule", "target", "reason", "reviewed_by") if not step.get(key)]
        if missing:
            raise CheckError(f"{path.name}: step {index + 1} lacks {', '.join(missing)}")
        if step["rule"] not in CONTRACT_RULES:
            raise CheckError(f"{path.name}: step {index + 1}: rule {step['rule']!r} cannot be allowed "
                             f"(contract rules: {', '.join(CONTRACT_RULES)})")
        entries.append(Allowed(**{key: step[key] for key in ("migration", "rule", "target", "reason", "reviewed_by")}))
    return entries


def check(migrations_dir: Path = MIGRATIONS_DIR, allow_list: Path = ALLOW_LIST) -> list[str]:
    """Problems (one line each): findings without an allow-list entry, and
    entries that match nothing (a stale allow-list hides nothing)."""
    allowed = load_allow_list(allow_list)
    schema = Schema()
    problems, used = [], set()
    for path in sorted(migrations_dir.glob("*.sql")):
        for finding in check_sql(path.stem, path.read_text(encoding="utf-8"), schema):
            match = next((entry for entry in allowed if (entry.migration, entry.rule, entry.target)
                          == (finding.migration, finding.rule, finding.target)), None)
            if match is None:
                problems.append(finding.describe())
            else:
                used.add(match)
    problems += [f"{allow_list.name}: step {entry.migration} {entry.rule} {entry.target} matches no statement"
                 for entry in allowed if entry not in used]
    return problems


def main(argv: list[str]) -> int:
    directory = Path(argv[0]) if argv else MIGRATIONS_DIR
    try:
        problems = check(directory, Path(argv[1]) if len(argv) > 1 else ALLOW_LIST)
    except CheckError as error:
        print(f"govstack: {error}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"govstack: {problem}", file=sys.stderr)
    if problems:
        print(f"govstack: {len(problems)} migration step(s) the previous release cannot run against; expand first, "
              f"contract one release later through a reviewed entry in {ALLOW_LIST.name}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
