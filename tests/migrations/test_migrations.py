import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from tests.services import alembic_config, migrate
from workers.db import Base


def table_names(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_then_downgrade_round_trips(db_url):
    migrate(db_url)
    assert "bootstrap_heartbeat" in table_names(db_url)
    command.downgrade(alembic_config(db_url), "base")
    assert table_names(db_url) == set()
    migrate(db_url)
    assert "bootstrap_heartbeat" in table_names(db_url)


def test_migrations_match_the_models(migrated_db_url):
    engine = sa.create_engine(migrated_db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_constraints_follow_the_naming_convention(postgres_url):
    migrate(postgres_url)
    engine = sa.create_engine(postgres_url)
    pk = sa.inspect(engine).get_pk_constraint("bootstrap_heartbeat")
    engine.dispose()
    assert pk["name"] == "pk_bootstrap_heartbeat"


def test_0006_adds_feed_registry_and_its_downgrade_removes_it_alone(db_url):
    migrate(db_url)
    assert "feed_registry" in table_names(db_url)
    command.downgrade(alembic_config(db_url), "0005")
    assert "feed_registry" not in table_names(db_url) and "raw_object" in table_names(db_url)
    migrate(db_url)
    assert "feed_registry" in table_names(db_url)
