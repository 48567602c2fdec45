"""SQL Server / Azure SQL without a server: the type map, the SQL that SQLAlchemy's mssql dialect compiles
for chunking, checksums and MERGE, and the bulk-copy call made on a double of the driver."""

from __future__ import annotations

import inspect
import struct
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Table, func, literal_column, select
from sqlalchemy.dialects import mssql, postgresql
from sqlalchemy.dialects.mssql import pymssql as mssql_pymssql
from sqlalchemy.schema import CreateTable
from sqlalchemy.sql import column, table

from migrate.databases.dialects import ops_for
from migrate.databases.dialects.mssql import BATCH, MssqlOps, bulk_copy
from migrate.databases.endpoint import Endpoint, classify
from migrate.databases.keyranges import KeyOrder, KeyRange
from migrate.databases.schema import ColumnInfo, TableInfo, build_target
from migrate.databases.typemap import map_type
from migrate.databases.values import ColumnKind, kind_of
from migrate.errors import EndpointError
from migrate.plan.model import Connection


def compiled(element: Any, dialect: Any = None) -> str:
    dialect = dialect or modern_mssql()
    return " ".join(str(element.compile(dialect=dialect)).split())


def modern_mssql() -> mssql.dialect:
    dialect = mssql_pymssql.dialect()  # without the driver loaded it compiles binds as :name
    dialect.server_version_info = (16, 0)  # SQL Server 2022 / Azure SQL: OFFSET ... FETCH
    dialect._supports_offset_fetch = True
    return dialect


PG_TYPES = [
    (postgresql.TIMESTAMP(timezone=True), "timestamptz", "DATETIMEOFFSET(6)"),
    (postgresql.TIMESTAMP(), "timestamp", "DATETIME2(6)"),
    (postgresql.TEXT(), "text", "NVARCHAR(max)"),
    (postgresql.VARCHAR(40), "varchar(40)", "NVARCHAR(40)"),
    (postgresql.BYTEA(), "bytea", "VARBINARY(max)"),
    (postgresql.UUID(), "uuid", "UNIQUEIDENTIFIER"),
    (postgresql.BOOLEAN(), "boolean", "BIT"),
    (postgresql.NUMERIC(12, 4), "numeric(12,4)", "DECIMAL(12, 4)"),
    (postgresql.BIGINT(), "bigint", "BIGINT"),
    (postgresql.INTEGER(), "integer", "INTEGER"),
    (postgresql.DOUBLE_PRECISION(), "double precision", "FLOAT(53)"),
    (postgresql.DATE(), "date", "DATE"),
    (postgresql.JSONB(), "jsonb", "NVARCHAR(max)"),
]


@pytest.mark.parametrize(("source_type", "declared", "expected"), PG_TYPES, ids=[t[1] for t in PG_TYPES])
def test_postgres_types_map_to_sql_server(source_type: Any, declared: str, expected: str) -> None:
    mapped = map_type(source_type, declared, kind_of(source_type, declared), "postgresql", "mssql")
    assert mapped.lossy is None
    assert mapped.type.compile(dialect=mssql.dialect()) == expected


@pytest.mark.parametrize(("source_type", "declared", "reason"), [
    (postgresql.NUMERIC(), "numeric", "decimal(38,10)"),
    (postgresql.NUMERIC(50, 2), "numeric(50,2)", "exceeds SQL Server's 38 digits"),
    (postgresql.INTERVAL(), "interval", "has no equivalent"),
    (postgresql.ARRAY(postgresql.INTEGER()), "integer[]", "has no equivalent"),
])
def test_lossy_mappings_say_why(source_type: Any, declared: str, reason: str) -> None:
    mapped = map_type(source_type, declared, kind_of(source_type, declared), "postgresql", "mssql")
    assert mapped.lossy is not None and reason in mapped.lossy


def test_within_sql_server_types_are_kept() -> None:
    for type_ in (mssql.DATETIMEOFFSET(7), mssql.NVARCHAR(None), mssql.MONEY(), mssql.UNIQUEIDENTIFIER()):
        assert map_type(type_, None, kind_of(type_), "mssql", "mssql").type is type_
    assert kind_of(mssql.MONEY()) == ColumnKind("decimal", 4)
    assert kind_of(mssql.DATETIMEOFFSET()) == ColumnKind("timestamp", tz=True)
    assert kind_of(mssql.BIT()) == ColumnKind("bool")


def observations_info() -> TableInfo:
    cols = [
        ColumnInfo("encounter_id", postgresql.BIGINT(), "bigint", False, ColumnKind("int")),
        ColumnInfo("seq", postgresql.INTEGER(), "integer", False, ColumnKind("int")),
        ColumnInfo("order", postgresql.TEXT(), "text", True, ColumnKind("text")),
        ColumnInfo("value", postgresql.NUMERIC(12, 4), "numeric(12,4)", True, ColumnKind("decimal", 4)),
        ColumnInfo("observed_at", postgresql.TIMESTAMP(timezone=True), "timestamptz", False,
                   ColumnKind("timestamp", tz=True)),
    ]
    return TableInfo("dbo", "observations", cols, ["encounter_id", "seq"])


def test_create_table_for_sql_server() -> None:
    target = build_target([observations_info()], "postgresql", "mssql").tables["dbo.observations"]
    assert isinstance(target, Table)
    assert compiled(CreateTable(target)) == (
        "CREATE TABLE dbo.observations ( encounter_id BIGINT NOT NULL, seq INTEGER NOT NULL, [order] NVARCHAR(max) "
        "NULL, value DECIMAL(12, 4) NULL, observed_at DATETIMEOFFSET(6) NOT NULL, PRIMARY KEY (encounter_id, seq) )")


def test_chunking_sql_expands_composite_keys_and_uses_offset_fetch() -> None:
    ops = MssqlOps(modern_mssql())
    clause = observations_info().clause()
    order = KeyOrder(ops, clause, ["encounter_id", "seq"])
    query = (select(clause.c.encounter_id, clause.c.seq).where(order.where(KeyRange((10, 2), (20, 1))))
             .order_by(*order.columns).offset(4999).limit(1))
    sql = compiled(query)
    assert sql == (
        "SELECT dbo.observations.encounter_id, dbo.observations.seq FROM dbo.observations "
        "WHERE (dbo.observations.encounter_id > :encounter_id_1 OR dbo.observations.encounter_id = "
        ":encounter_id_2 AND dbo.observations.seq > :seq_1) AND NOT (dbo.observations.encounter_id > "
        ":encounter_id_3 OR dbo.observations.encounter_id = :encounter_id_4 AND dbo.observations.seq > "
        ":seq_2) ORDER BY dbo.observations.encounter_id, dbo.observations.seq "
        "OFFSET :param_1 ROWS FETCH FIRST :param_2 ROWS ONLY")


def test_text_keys_compare_in_code_point_order_across_dialects() -> None:
    ops = MssqlOps(modern_mssql())
    clause = table("wards", column("code"), schema="dbo")
    order = KeyOrder(ops, clause, ["code"], text_columns=["code"])
    assert "(dbo.wards.code COLLATE Latin1_General_100_BIN2) > :param_1" in compiled(select(clause.c.code).where(
        order.where(KeyRange(("A",), None))))


def test_checksum_sql_hashes_utf8_row_text_into_60_bit_slices() -> None:
    ops = MssqlOps(modern_mssql())
    kinds = {c.name: c.kind for c in observations_info().columns}
    row_text = ops.row_text_sql(list(kinds.items()))
    assert row_text.count("'N|'") == 5  # NULL kept apart from '' in every column
    # text is prefixed by its length in UTF-8 bytes
    assert "DATALENGTH(CONVERT(VARCHAR(MAX), CAST([order] AS NVARCHAR(MAX)) COLLATE Latin1_General_100_BIN2_UTF8))" \
        in row_text
    assert "CONVERT(VARCHAR(50), CAST(value AS DECIMAL(38, 4)))" in row_text
    utc = "CONVERT(DATETIME2(6), SWITCHOFFSET(observed_at, '+00:00'))"
    assert (f"(CONVERT(VARCHAR(19), {utc}, 120) + CASE WHEN DATEPART(MICROSECOND, {utc}) = 0 THEN '' ELSE '.' + "
            f"REPLACE(RTRIM(REPLACE(RIGHT(CONVERT(VARCHAR(26), {utc}, 121), 6), '0', ' ')), ' ', '0') END)") in row_text
    agg = ops.hash_sum_sql(row_text)
    assert agg.startswith("SUM(CAST((CAST(SUBSTRING(HASHBYTES('MD5', CONVERT(VARCHAR(MAX), CAST(")
    assert "COLLATE Latin1_General_100_BIN2_UTF8)), 9, 8) AS BIGINT) & 1152921504606846975) AS DECIMAL(38, 0)))" \
        in agg
    clause = observations_info().clause()
    order = KeyOrder(ops, clause, ["encounter_id", "seq"])
    sql = compiled(select(func.count(), literal_column(agg)).select_from(clause)
                   .where(order.where(KeyRange(None, (5, 1)))))
    assert sql.startswith("SELECT count(*) AS count_1, SUM(CAST((CAST(SUBSTRING(HASHBYTES('MD5'")
    assert sql.endswith("FROM dbo.observations WHERE NOT (dbo.observations.encounter_id > :encounter_id_1 OR "
                        "dbo.observations.encounter_id = :encounter_id_2 AND dbo.observations.seq > :seq_1)")


def test_every_kind_has_sql_server_canonical_text() -> None:
    ops = MssqlOps(modern_mssql())
    expected = {
        "int": "CONVERT(VARCHAR(20), c)",
        "bool": "(CASE WHEN c = 1 THEN '1' WHEN c = 0 THEN '0' END)",
        "uuid": "LOWER(REPLACE(CONVERT(CHAR(36), c), '-', ''))",
        "binary": "LOWER(CONVERT(VARCHAR(MAX), c, 2))",
        "date": "CONVERT(VARCHAR(10), c, 23)",
        "float": "CONVERT(VARCHAR(50), CAST(ROUND(c, 9) AS DECIMAL(38, 9)))",
    }
    for kind, sql in expected.items():
        assert ops.norm_sql("c", ColumnKind(kind, 9 if kind == "float" else None)) == sql


def test_int_key_checksum_never_overflows_bigint() -> None:
    ops = MssqlOps(modern_mssql())
    assert ops.int_key_sums_sql("[id]") == ["SUM(CAST([id] % 2147483647 AS DECIMAL(38, 0)))",
                                            "SUM(CAST(([id] % 65521) * ([id] % 65519) AS DECIMAL(38, 0)))"]


def test_upsert_is_one_merge_per_row() -> None:
    ops = MssqlOps(modern_mssql())
    statement = ops.merge_statement(observations_info().clause(), ["encounter_id", "seq", "order", "value"],
                                    ["encounter_id", "seq"])
    assert compiled(statement) == (
        "MERGE INTO dbo.observations WITH (HOLDLOCK) AS tgt USING (VALUES (:p0, :p1, :p2, :p3)) "
        "AS src (encounter_id, seq, [order], value) ON tgt.encounter_id = src.encounter_id AND tgt.seq = src.seq "
        "WHEN MATCHED THEN UPDATE SET tgt.[order] = src.[order], tgt.value = src.value "
        "WHEN NOT MATCHED THEN INSERT (encounter_id, seq, [order], value) "
        "VALUES (src.encounter_id, src.seq, src.[order], src.value);")
    keys_only = compiled(ops.merge_statement(observations_info().clause(), ["encounter_id", "seq"],
                                             ["encounter_id", "seq"]))
    assert "WHEN MATCHED" not in keys_only and "WHEN NOT MATCHED THEN INSERT" in keys_only


class MssqlPythonCursor:
    """Double of an mssql-python cursor: records `bulkcopy` calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[Any, ...]], int]] = []
        self.options: list[dict[str, Any]] = []

    def bulkcopy(self, table_name: str, data: list[tuple[Any, ...]], batch_size: int = 0,
                 timeout: int = 30, **options: Any) -> dict[str, Any]:
        self.calls.append((table_name, data, batch_size))
        self.options.append({"timeout": timeout, **options})
        return {"rows_copied": len(data), "batch_count": 1, "elapsed_time": 0.0}


class MssqlPythonConnection:
    def __init__(self) -> None:
        self.the_cursor = MssqlPythonCursor()

    def cursor(self) -> MssqlPythonCursor:
        return self.the_cursor


class PymssqlConnection:
    """Double of a pymssql connection: records `bulk_copy` calls (its cursors have no bulkcopy)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[Any, ...]], list[int], int]] = []

    def cursor(self) -> object:
        return object()

    def bulk_copy(self, table_name: str, elements: list[tuple[Any, ...]], column_ids: list[int] | None = None,
                  batch_size: int = 1000, tablock: bool = False, check_constraints: bool = False,
                  fire_triggers: bool = False) -> None:
        self.calls.append((table_name, list(elements), list(column_ids or []), batch_size))


def test_bulk_copy_with_mssql_python_sends_batches() -> None:
    raw = MssqlPythonConnection()
    rows = ((i, i % 4, f"v{i}") for i in range(BATCH * 2 + 5))  # a generator: never materialised at once
    sent = bulk_copy(raw, "[dbo].[observations]", ["encounter_id", "seq", "note"], rows)
    assert sent == BATCH * 2 + 5
    assert [(name, len(data), size) for name, data, size in raw.the_cursor.calls] == [
        ("[dbo].[observations]", BATCH, BATCH), ("[dbo].[observations]", BATCH, BATCH),
        ("[dbo].[observations]", 5, 5)]
    assert raw.the_cursor.calls[0][1][1] == (1, 1, "v1")


def test_bulk_copy_with_mssql_python_keeps_identity_values_and_nulls() -> None:
    raw = MssqlPythonConnection()
    bulk_copy(raw, "[dbo].[wards]", ["id", "name"], iter([(7, None)]))
    options = raw.the_cursor.options[0]
    # left to its defaults, mssql-python renumbers IDENTITY columns and puts column defaults in place of NULL
    assert options["keep_identity"] is True and options["keep_nulls"] is True
    assert options["timeout"] >= 600
    assert not options.get("fire_triggers") and not options.get("check_constraints")
    import mssql_python  # the test extra installs it: every option we pass is one the driver takes

    assert set(options) <= set(inspect.signature(mssql_python.Cursor.bulkcopy).parameters)


def test_bulk_copy_with_pymssql_names_the_columns() -> None:
    raw = PymssqlConnection()
    ops = MssqlOps(modern_mssql())
    conn = SimpleNamespace(connection=SimpleNamespace(driver_connection=raw))
    written = ops.write_rows(conn, observations_info().clause(), ["encounter_id", "seq", "value"],  # type: ignore[arg-type]
                             iter([(1, 1, "1.5"), (1, 2, None)]))
    assert written == 2
    assert raw.calls == [("dbo.observations", [(1, 1, "1.5"), (1, 2, None)], [1, 2, 3], 2)]


def test_sql_server_errors_are_classified_and_redacted(tmp_path: Any) -> None:
    assert classify(Exception("(18456, b\"Login failed for user 'sa'.\")")) == "bad credentials"
    assert classify(Exception("Adaptive Server is unavailable or does not exist (db:1433)")) == "server unreachable"
    assert classify(Exception("Invalid object name 'dbo.wards'.")) == "missing object"
    assert classify(Exception("The SELECT permission was denied on the object 'patients'")) == "permission denied"
    endpoint = Endpoint("azure_sql", "mssql+pymssql://sa:Sup3r-Secret@sql.example:1433/ppm", tmp_path,
                        role="target")
    assert endpoint.dialect == "mssql"
    error = endpoint.error(Exception("(18456, b\"Login failed for user 'sa'.\")"), "cannot connect")
    assert isinstance(error, EndpointError)
    assert str(error) == ("target connection 'azure_sql' (mssql+pymssql://sa:***@sql.example:1433/ppm): "
                          "cannot connect: bad credentials: (18456, b\"Login failed for user 'sa'.\")")
    assert ops_for("mssql", modern_mssql()).name == "mssql"


def test_mssql_python_is_the_sql_server_driver(tmp_path: Any) -> None:
    endpoint = Endpoint("azure_sql", "mssql+mssqlpython://svc:p%40ss;w0rd@sql.example:1433/ppm", tmp_path,
                        role="target")
    engine = endpoint.engine  # no connection is made: the dialect and the driver load
    assert engine.dialect.driver == "mssqlpython"
    (connection_string,), _ = engine.dialect.create_connect_args(engine.url)
    assert connection_string == "Server=sql.example,1433;Database=ppm;UID=svc;PWD={p@ss;w0rd}"
    endpoint.dispose()


def test_mssql_python_connection_failures_are_classified() -> None:
    # what mssql-python says when nothing listens on the server's port, and when the login times out
    assert classify(Exception("Driver Error: Client unable to establish connection; DDBC Error: [Microsoft]TCP "
                              "Provider: Error code 0x2749 Client unable to establish connection")) \
        == "server unreachable"
    assert classify(Exception("Driver Error: Login timeout expired")) == "server unreachable"
    assert classify(Exception("Login failed for user '<token-identified principal>'.")) == "bad credentials"


def test_a_missing_sql_server_driver_names_the_extra(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlalchemy.dialects.mssql.mssqlpython as dialect_module

    def missing() -> None:
        raise ImportError("No module named 'mssql_python'")

    monkeypatch.setattr(dialect_module.MSDialect_mssqlpython, "import_dbapi", classmethod(lambda cls: missing()))
    endpoint = Endpoint("azure_sql", "mssql+mssqlpython://svc@sql.example/ppm", tmp_path, role="target")
    with pytest.raises(EndpointError) as caught:
        endpoint.engine  # noqa: B018 - creating the engine is what fails
    assert "migrate[mssql]" in (caught.value.hint or "")


class MintingCredential:
    """Stand-in for DefaultAzureCredential (the Azure identity boundary): a new token on every call."""

    def __init__(self) -> None:
        self.scopes: list[tuple[str, ...]] = []
        self.clouds: list[str] = []  # the cloud each DefaultAzureCredential was made for

    def get_token(self, *scopes: str, **_options: Any) -> Any:
        self.scopes.append(scopes)
        return SimpleNamespace(token=f"eyJ0eXAiOiJKV1QifQ.token-{len(self.scopes)}.sig", expires_on=4102444800)


@pytest.fixture
def minting(monkeypatch: pytest.MonkeyPatch) -> MintingCredential:
    import migrate.azure.credentials

    credential = MintingCredential()
    monkeypatch.setattr(migrate.azure.credentials, "default_credential",
                        lambda cloud="AzureCloud": credential.clouds.append(cloud) or credential)
    return credential


@pytest.fixture
def driver_logins(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[int, Any]]]:
    """What mssql-python hands its native ODBC layer at each login (connection string, pre-connect attributes);
    the login itself then fails, as no SQL Server exists here."""
    import mssql_python.connection

    logins: list[tuple[str, dict[int, Any]]] = []

    class NativeLogin:
        def __init__(self, connection_string: str, _pooling: Any, attrs_before: dict[int, Any], *_: Any) -> None:
            logins.append((connection_string, dict(attrs_before)))
            raise RuntimeError("no SQL Server here")

    monkeypatch.setattr(mssql_python.connection.ddbc_bindings, "Connection", NativeLogin)
    return logins


def token_struct(token: str) -> bytes:
    raw = token.encode("utf-16-le")
    return struct.pack("<I", len(raw)) + raw


SQL_COPT_SS_ACCESS_TOKEN = 1256  # the ODBC pre-connect attribute that carries an Entra ID access token


def entra_endpoint(tmp_path: Any, **connection: Any) -> Endpoint:
    plan_connection = Connection(**{"driver": "mssql", "host": "sql-epr.database.windows.net", "database": "ppm",
                                    "auth": "entra", **connection})
    return Endpoint.of("azure_sql", plan_connection, tmp_path, role="target")


def test_entra_logs_in_with_a_fresh_token_on_every_new_connection(tmp_path: Any, minting: MintingCredential,
                                                                    driver_logins: list) -> None:
    endpoint = entra_endpoint(tmp_path, user="loader@example.org")
    for _ in range(2):
        with pytest.raises(EndpointError, match="cannot connect"), endpoint.errors("cannot connect"), \
                endpoint.engine.connect():
            pass
    assert minting.clouds == ["AzureCloud"]
    assert [attrs[SQL_COPT_SS_ACCESS_TOKEN] for _, attrs in driver_logins] == [
        token_struct("eyJ0eXAiOiJKV1QifQ.token-1.sig"), token_struct("eyJ0eXAiOiJKV1QifQ.token-2.sig")]
    assert minting.scopes == [("https://database.windows.net/.default",)] * 2
    for connection_string, _ in driver_logins:  # the token is the identity: no user, no password
        assert "Server=sql-epr.database.windows.net,1433" in connection_string and "Database=ppm" in connection_string
        assert "UID=" not in connection_string and "PWD=" not in connection_string
    assert "loader" not in endpoint.shown
    endpoint.dispose()


@pytest.mark.parametrize(("cloud", "scope"), [
    ("AzureCloud", "https://database.windows.net/.default"),
    ("AzureUSGovernment", "https://database.usgovcloudapi.net/.default"),
    ("AzureChinaCloud", "https://database.chinacloudapi.cn/.default"),
])
def test_entra_token_scope_follows_the_plan_s_cloud(tmp_path: Any, minting: MintingCredential, driver_logins: list,
                                                    cloud: str, scope: str) -> None:
    endpoint = entra_endpoint(tmp_path, azure={"subscription_id": "0000", "resource_group": "rg-epr",
                                               "cloud": cloud})
    with pytest.raises(EndpointError), endpoint.errors("cannot connect"), endpoint.engine.connect():
        pass
    assert minting.clouds == [cloud]  # DefaultAzureCredential signs in at that cloud's authority
    assert minting.scopes == [(scope,)]
    assert driver_logins[0][1][SQL_COPT_SS_ACCESS_TOKEN] == token_struct("eyJ0eXAiOiJKV1QifQ.token-1.sig")
    endpoint.dispose()


def test_entra_without_an_identity_fails_at_connect_naming_the_sources(tmp_path: Any, driver_logins: list,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.core.exceptions import ClientAuthenticationError

    import migrate.azure.credentials

    class NoIdentity:
        def get_token(self, *_scopes: str, **_options: Any) -> Any:
            raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token from the included "
                                            "credentials.\nAttempted credentials:\n\tEnvironmentCredential: "
                                            "EnvironmentCredential authentication unavailable.\n")

    monkeypatch.setattr(migrate.azure.credentials, "default_credential", lambda cloud="AzureCloud": NoIdentity())
    endpoint = entra_endpoint(tmp_path)
    with pytest.raises(EndpointError) as raised, endpoint.errors("cannot connect"), endpoint.engine.connect():
        pass
    assert "no Azure credential produced a token for https://database.windows.net/.default" in str(raised.value)
    assert "az login" in (raised.value.hint or "") and driver_logins == []  # the driver never tried
    endpoint.dispose()


def test_a_refused_entra_token_says_what_the_identity_needs(tmp_path: Any, minting: MintingCredential) -> None:
    endpoint = entra_endpoint(tmp_path)
    error = endpoint.error(Exception("Login failed for user '<token-identified principal>'."), "cannot connect")
    assert "bad credentials" in str(error) and "FROM EXTERNAL PROVIDER" in (error.hint or "")
    password_endpoint = Endpoint("sql", "mssql+mssqlpython://sa:pw@sql.example/ppm", tmp_path)
    assert password_endpoint.error(Exception("Login failed for user 'sa'."), "cannot connect").hint is None


class RecordingConnection:
    """Double of a SQLAlchemy connection to SQL Server: records each statement as SQL Server receives it."""

    def __init__(self, fail_on: str | None = None, in_transaction: bool = False) -> None:
        self.log: list[str] = []
        self.fail_on = fail_on
        self._in_transaction = in_transaction

    def execute(self, statement: Any, params: dict[str, Any] | None = None) -> None:
        sql = str(statement.compile(dialect=modern_mssql()))
        self.log.append(f"{sql} {params}")
        if self.fail_on and self.fail_on in sql:
            raise OSError("the connection was reset")

    def in_transaction(self) -> bool:
        return self._in_transaction

    def rollback(self) -> None:
        self.log.append("ROLLBACK")
        self._in_transaction = False

    def commit(self) -> None:
        self.log.append("COMMIT")

    def invalidate(self) -> None:
        self.log.append("INVALIDATE")


def test_a_workers_chunk_lock_is_a_session_application_lock_held_across_both_transactions() -> None:
    ops = MssqlOps(modern_mssql())
    conn = RecordingConnection()
    ops.lock_chunk(conn, -42)  # type: ignore[arg-type]
    [taken] = conn.log
    # owned by the session: the delete commits before the bulk copy, and the lock must cover both
    assert ("EXEC @granted = sp_getapplock @Resource = :resource, @LockMode = 'Exclusive', @LockOwner = 'Session', "
            "@LockTimeout = -1; IF @granted < 0 THROW 51000") in taken
    assert taken.endswith("{'resource': 'migrate:load:-42'}")
    ops.unlock_chunk(conn, -42)  # type: ignore[arg-type]
    assert conn.log[1:] == ["EXEC sp_releaseapplock @Resource = :resource, @LockOwner = 'Session'; "
                            "{'resource': 'migrate:load:-42'}", "COMMIT"]


def test_a_failed_chunk_rolls_back_before_its_lock_goes_and_a_doubtful_connection_is_dropped() -> None:
    ops = MssqlOps(modern_mssql())
    failed = RecordingConnection(in_transaction=True)
    ops.unlock_chunk(failed, 7)  # type: ignore[arg-type]
    assert failed.log[0] == "ROLLBACK" and "sp_releaseapplock" in failed.log[1] and failed.log[2] == "COMMIT"
    broken = RecordingConnection(fail_on="sp_releaseapplock")
    ops.unlock_chunk(broken, 7)  # type: ignore[arg-type]
    assert broken.log[-1] == "INVALIDATE"  # it may still hold the lock: never back to the pool
