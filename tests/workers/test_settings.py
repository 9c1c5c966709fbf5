import pytest

from workers.settings import (
    DEFAULTS,
    DbConnectSettings,
    SettingsError,
    load_db_connect_settings,
    load_metadata_db_url,
    load_settings,
)

KEYS = {"MINIO_ACCESS_KEY": "access", "MINIO_SECRET_KEY": "secret"}


def test_dev_defaults_apply_when_nothing_but_the_keys_is_set():
    settings = load_settings(KEYS)
    assert settings.metadata_db_url == "sqlite:///.local/metadata.db"
    assert settings.s3_endpoint == "http://127.0.0.1:9000"
    assert settings.bucket == "health-raw"


@pytest.mark.parametrize("name", ["MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"])
def test_no_object_store_key_has_a_default_a_missing_one_fails_naming_it(name):
    with pytest.raises(SettingsError) as excinfo:
        load_settings({k: v for k, v in KEYS.items() if k != name})
    assert str(excinfo.value) == f"{name} is empty or unset"


def test_migrations_need_only_the_database_url():
    assert load_metadata_db_url({"METADATA_DB_URL": "sqlite:///m.db"}) == "sqlite:///m.db"


def test_no_credential_default_is_left_in_the_code():
    assert not any("KEY" in name or "PASSWORD" in name or "SECRET" in name for name in DEFAULTS)


def test_endpoint_host_and_dialect_are_derived():
    settings = load_settings(
        {**KEYS, "MINIO_ENDPOINT": "http://minio:9000/", "METADATA_DB_URL": "postgresql+psycopg2://u:p@db/meta"}
    )
    assert settings.endpoint_host == "minio:9000"
    assert settings.db_dialect == "postgresql"


@pytest.mark.parametrize(
    ("load", "name", "value"),
    [
        (load_settings, "METADATA_DB_URL", "not a url"),
        (load_settings, "METADATA_DB_URL", "mysql://u@h/db"),
        (load_settings, "METADATA_DB_URL", "   "),
        (load_settings, "MINIO_ENDPOINT", "127.0.0.1:9000"),
        (load_settings, "MINIO_ENDPOINT", "http://127.0.0.1:notaport"),
        (load_settings, "MINIO_ACCESS_KEY", ""),
        (load_settings, "MINIO_SECRET_KEY", ""),
        (load_settings, "MINIO_BUCKET", "Health_Raw"),
        (load_settings, "MINIO_BUCKET", "x"),
        (load_db_connect_settings, "DB_CONNECT_ATTEMPTS", "0"),
        (load_db_connect_settings, "DB_CONNECT_ATTEMPTS", "2.5"),
        (load_db_connect_settings, "DB_CONNECT_ATTEMPTS", "many"),
        (load_db_connect_settings, "DB_CONNECT_ATTEMPTS", "inf"),
        (load_db_connect_settings, "DB_CONNECT_ATTEMPTS", ""),
        (load_db_connect_settings, "DB_CONNECT_BACKOFF_SECONDS", "-1"),
        (load_db_connect_settings, "DB_CONNECT_BACKOFF_SECONDS", "nan"),
        (load_db_connect_settings, "DB_CONNECT_BACKOFF_SECONDS", "1s"),
    ],
)
def test_a_bad_setting_fails_with_one_line_naming_the_variable(load, name, value):
    with pytest.raises(SettingsError) as excinfo:
        load({**KEYS, name: value})
    message = str(excinfo.value)
    assert message.startswith(name)
    assert "\n" not in message


def test_malformed_values_are_not_echoed_back():
    secret_looking = "postgresql+psycopg2://user:hunter2@@@/"
    with pytest.raises(SettingsError) as excinfo:
        load_settings({**KEYS, "METADATA_DB_URL": "::" + secret_looking})
    assert "hunter2" not in str(excinfo.value)


def test_credentials_stay_out_of_repr():
    settings = load_settings({"MINIO_ACCESS_KEY": "AKIA-SENTINEL", "MINIO_SECRET_KEY": "s3cr3t-SENTINEL"})
    assert "SENTINEL" not in repr(settings)


def test_the_metadata_db_password_never_shows_in_repr_or_str():
    url = "postgresql+psycopg2://intake:PASSWORD-SENTINEL@db:5432/metadata"
    settings = load_settings({**KEYS, "METADATA_DB_URL": url})
    assert settings.metadata_db_url == url
    for shown in (repr(settings), str(settings), f"{settings}"):
        assert "PASSWORD-SENTINEL" not in shown
        assert "postgresql+psycopg2://intake:***@db:5432/metadata" in shown


def test_every_default_is_a_valid_setting():
    assert load_settings({**DEFAULTS, **KEYS}).bucket == DEFAULTS["MINIO_BUCKET"]


def test_db_connect_defaults_are_five_attempts_from_half_a_second():
    assert load_db_connect_settings({}) == DbConnectSettings(attempts=5, backoff_seconds=0.5)


def test_db_connect_settings_are_read():
    env = {"DB_CONNECT_ATTEMPTS": " 1 ", "DB_CONNECT_BACKOFF_SECONDS": "0"}
    assert load_db_connect_settings(env) == DbConnectSettings(attempts=1, backoff_seconds=0.0)
