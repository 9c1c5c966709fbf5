"""The htpasswd files ui_proxy checks: hashes nginx's auth_basic accepts, never the passwords."""

import crypt

import pytest

from orchestrator.ui_access import Login, UiAccessError, main, render

ENV = {"UI_OPERATOR_PASSWORD": "op-secret-1", "UI_VIEWER_PASSWORD": "view-secret-2"}


def test_each_ui_gets_its_own_file_with_its_one_user_and_a_sha512_crypt_hash(tmp_path):
    render(tmp_path, ENV)
    for ui, password in (("operator", "op-secret-1"), ("viewer", "view-secret-2")):
        user, hashed = (tmp_path / f"{ui}.htpasswd").read_text().strip().split(":")
        assert user == ui and hashed.startswith("$6$")
        assert crypt.crypt(password, hashed) == hashed
        assert password not in hashed


def test_a_missing_password_fails_naming_the_variable_and_writes_nothing(tmp_path):
    with pytest.raises(UiAccessError, match="UI_VIEWER_PASSWORD"):
        render(tmp_path, {"UI_OPERATOR_PASSWORD": "x"})
    assert list(tmp_path.iterdir()) == []


def test_the_operator_and_the_viewer_must_be_different_users(tmp_path):
    with pytest.raises(UiAccessError, match="must differ"):
        render(tmp_path, {**ENV, "UI_OPERATOR_USER": "ann", "UI_VIEWER_USER": "ann"})


def test_rendering_prints_no_password(tmp_path, capsys, monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    assert main(["render", str(tmp_path)]) == 0
    printed = capsys.readouterr()
    assert not any(value in printed.out + printed.err for value in ENV.values())


def test_a_logins_repr_never_shows_its_password():
    login = Login("operator", "SENTINEL-UI-PASSWORD")
    assert "SENTINEL-UI-PASSWORD" not in repr(login) and "SENTINEL-UI-PASSWORD" not in str(login)
