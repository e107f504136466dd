"""The expand/contract check of the app's migrations (govstack/migration_check.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from govstack.migration_check import ALLOW_LIST, MIGRATIONS_DIR, CheckError, check

EXPAND = """
ALTER TABLE documents ADD COLUMN summary text, ADD COLUMN tier text NOT NULL DEFAULT 'standard';
CREATE INDEX documents_summary_idx ON documents (summary);
CREATE TABLE labels (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL);
ALTER TABLE labels ADD COLUMN colour text NOT NULL, ADD CONSTRAINT labels_name_key UNIQUE (name);
-- upload_date has had a default since 0001: old INSERTs that omit it still work
ALTER TABLE documents ALTER COLUMN upload_date SET NOT NULL;
ALTER TABLE documents ALTER COLUMN created_by SET DEFAULT 'unknown', ALTER COLUMN created_by SET NOT NULL;
CREATE OR REPLACE FUNCTION govstack_label_count() RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM labels $$;
UPDATE documents SET summary = left(filename, 80) WHERE summary IS NULL;
"""

CONTRACT = [
    ("ALTER TABLE documents DROP COLUMN chunk_count;", "drop_column", "documents.chunk_count"),
    ("ALTER TABLE documents RENAME COLUMN filename TO name;", "rename", "documents.filename"),
    ("ALTER TABLE chunks RENAME TO pieces;", "rename", "chunks"),
    ("DROP TABLE app_state;", "drop", "app_state"),
    ("DROP INDEX documents_sha256_idx;", "drop", "documents_sha256_idx"),
    ("ALTER TABLE documents ALTER COLUMN size TYPE numeric;", "alter_column_type", "documents.size"),
    ("ALTER TABLE documents ALTER COLUMN created_by SET NOT NULL;", "set_not_null", "documents.created_by"),
    ("ALTER TABLE documents ADD COLUMN tier text NOT NULL;", "add_column_not_null", "documents.tier"),
    ("ALTER TABLE documents ALTER COLUMN is_indexed DROP DEFAULT;", "drop_default", "documents.is_indexed"),
    ("ALTER TABLE documents ADD CONSTRAINT positive CHECK (size > 0);", "add_constraint", "documents.positive"),
    ("ALTER TABLE api_keys DROP CONSTRAINT api_keys_name_key;", "drop_constraint", "api_keys.api_keys_name_key"),
    ("ALTER TABLE app_state SET SCHEMA archive;", "set_schema", "app_state"),
    ("TRUNCATE chunks;", "truncate", "chunks"),
]

NOT_IN_A_TRANSACTION = [
    ("CREATE INDEX CONCURRENTLY d_idx ON documents (filename);", "not_in_transaction"),
    ("DROP INDEX CONCURRENTLY documents_sha256_idx;", "not_in_transaction"),
    ("VACUUM documents;", "not_in_transaction"),
    ("BEGIN;", "transaction_control"),
    ("COMMIT;", "transaction_control"),
]


def shipped_allow_list(tmp_path, extra=""):
    """The reviewed allow-list as shipped (its entries match shipped migrations), plus extra entries."""
    allow = tmp_path / "allow.toml"
    allow.write_text(ALLOW_LIST.read_text(encoding="utf-8") + extra)
    return allow


@pytest.fixture
def migrations(tmp_path):
    """A copy of the shipped migrations, to add one to."""
    directory = tmp_path / "migrations"
    directory.mkdir()
    for path in MIGRATIONS_DIR.glob("*.sql"):
        shutil.copy(path, directory)
    return directory


def test_the_shipped_migrations_only_expand():
    assert check() == []


def test_an_expand_only_migration_passes(migrations, tmp_path):
    (migrations / "0900_expand.sql").write_text(EXPAND)
    assert check(migrations, shipped_allow_list(tmp_path)) == []


@pytest.mark.parametrize(("sql", "rule", "target"), CONTRACT, ids=[c[1] + ":" + c[2] for c in CONTRACT])
def test_a_contract_step_is_rejected_naming_file_line_rule_and_target(migrations, tmp_path, sql, rule, target):
    (migrations / "0900_contract.sql").write_text(f"-- a comment first\n\n{sql}\n")
    problems = check(migrations, shipped_allow_list(tmp_path))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"0900_contract.sql:3: {rule} {target}: ")


@pytest.mark.parametrize(("sql", "rule"), NOT_IN_A_TRANSACTION)
def test_a_statement_that_breaks_the_one_transaction_rule_is_rejected(migrations, tmp_path, sql, rule):
    (migrations / "0900_tx.sql").write_text(sql)
    problems = check(migrations, shipped_allow_list(tmp_path))
    assert any(problem.startswith(f"0900_tx.sql:1: {rule} ") for problem in problems), problems


def test_a_reviewed_allow_list_entry_lets_exactly_its_step_through(migrations, tmp_path):
    (migrations / "0900_contract.sql").write_text(
        "ALTER TABLE documents DROP COLUMN chunk_count;\nALTER TABLE documents DROP COLUMN index_error;\n")
    allow = shipped_allow_list(
        tmp_path, '\n[[step]]\nmigration = "0900_contract"\nrule = "drop_column"\ntarget = "documents.chunk_count"\n'
        'reason = "unused since the release before"\nreviewed_by = "a reviewer"\n')
    problems = check(migrations, allow)
    assert len(problems) == 1 and "documents.index_error" in problems[0]


def test_a_stale_or_incomplete_allow_list_fails(migrations, tmp_path):
    allow = shipped_allow_list(
        tmp_path, '\n[[step]]\nmigration = "0900_gone"\nrule = "drop"\ntarget = "x"\nreason = "r"\nreviewed_by = "b"\n')
    assert check(migrations, allow) == ["allow.toml: step 0900_gone drop x matches no statement"]
    allow.write_text('[[step]]\nmigration = "0900_gone"\nrule = "drop"\ntarget = "x"\n')
    with pytest.raises(CheckError, match="lacks reason, reviewed_by"):
        check(migrations, allow)
    allow.write_text('[[step]]\nmigration = "m"\nrule = "transaction_control"\ntarget = "x"\nreason = "r"\n'
                     'reviewed_by = "b"\n')
    with pytest.raises(CheckError, match="cannot be allowed"):
        check(migrations, allow)


def test_sql_that_does_not_parse_is_an_error_naming_the_file(migrations, tmp_path):
    (migrations / "0900_broken.sql").write_text("ALTER TABLE documents ADD COLUMN;")
    with pytest.raises(CheckError, match="0900_broken.sql does not parse"):
        check(migrations, shipped_allow_list(tmp_path))


def test_the_command_exits_non_zero_with_one_line_per_problem(migrations, tmp_path):
    (migrations / "0900_contract.sql").write_text("DROP TABLE app_state;")
    result = subprocess.run([sys.executable, "-m", "govstack.migration_check", str(migrations), str(ALLOW_LIST)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == (
        "govstack: 0900_contract.sql:1: drop app_state: drops what the previous release may use")
