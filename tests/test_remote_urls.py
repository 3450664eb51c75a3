"""Remote names and credential scoping, without a server: pure policy (sa3ckpt.io.remote)."""

from __future__ import annotations

import pytest

from sa3ckpt.errors import UsageError
from sa3ckpt.io.remote import RemoteSettings
from sa3ckpt.io.remote.http import HttpSession
from sa3ckpt.io.remote.urls import BadUrl, display, is_url, origin, resolve, unsupported_scheme


def test_hub_paths_resolve_like_the_hubs_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    name = resolve("hf://org/repo/sub/lora.safetensors")
    assert name.url == "https://huggingface.co/org/repo/resolve/main/sub/lora.safetensors"
    assert name.name == "hf://org/repo/sub/lora.safetensors" and name.hub
    assert not name.is_folder
    pinned = resolve("hf://org/repo@refs/pr/1/a.gguf")
    assert resolve("hf://org/repo@refs%2Fpr%2F1/a.gguf").url == pinned.url
    # a revision with slashes is one path segment on the hub
    assert pinned.url == "https://huggingface.co/org/repo/resolve/refs%2Fpr%2F1/a.gguf"
    data = resolve("hf://datasets/org/repo@v2/x.safetensors")
    assert data.url == "https://huggingface.co/datasets/org/repo/resolve/v2/x.safetensors"
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
    assert resolve("hf://o/r/peft").url == "http://127.0.0.1:9/o/r/resolve/main/peft"
    assert resolve("hf://o/r/peft").is_folder


@pytest.mark.parametrize("bad", ["hf://org", "hf://org/", "hf:///repo/x", "hf://o/r@/x"])
def test_bad_hub_paths(bad: str) -> None:
    with pytest.raises(BadUrl, match="hf://ORG/REPO"):
        resolve(bad)


def test_files_and_folders_by_spelling() -> None:
    assert not resolve("https://h/a/lora.safetensors").is_folder
    assert not resolve("https://h/a/x.GGUF").is_folder
    assert not resolve("https://h/download?id=3").is_folder  # a query names a file
    assert resolve("https://h/a/peft-run").is_folder
    assert resolve("https://h/a/x.safetensors/").is_folder  # a trailing slash decides
    child = resolve("https://h/a/peft-run").child("adapter_config.json")
    assert child.url == "https://h/a/peft-run/adapter_config.json"


def test_schemes() -> None:
    assert is_url("http://h/x") and is_url("HTTPS://h/x") and is_url("hf://o/r/x")
    assert not is_url("./x.safetensors") and not is_url("C:/x") and not is_url("ftp://h/x")
    assert "unsupported URL scheme 'ftp'" in (unsupported_scheme("ftp://h/x") or "")
    assert unsupported_scheme("file.safetensors") is None
    assert unsupported_scheme("https://h/x") is None


def test_credentials_are_not_displayed() -> None:
    assert display("https://user:pw@h:8/x?q=1") == "https://h:8/x?q=1"
    assert resolve("https://user:pw@h/x.safetensors").name == "https://h/x.safetensors"


def test_origin_fills_default_ports() -> None:
    assert origin("https://H/x") == origin("https://h:443/y") == ("https", "h", 443)
    assert origin("http://h/x") != origin("https://h/x")  # a downgrade is another origin


def test_hf_token_is_for_the_hub_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hub-token")
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example")
    session = HttpSession(RemoteSettings())
    try:
        hub = session.credential(resolve("hf://o/r/x.safetensors"))
        assert hub == (("https", "hub.example", 443), "hub-token")
        assert session.credential(resolve("https://elsewhere.example/x.safetensors")) is None
        # the hub spelled as https is the hub too (its own tools send the token there)
        direct = resolve("https://hub.example/o/r/resolve/main/x.safetensors")
        assert session.credential(direct) is not None
    finally:
        session.close()


def test_token_env_scopes_to_the_url_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_TOKEN", "mine")
    session = HttpSession(RemoteSettings(token_env="MY_TOKEN"))
    try:
        got = session.credential(resolve("https://private.example:8443/a.safetensors"))
        assert got == (("https", "private.example", 8443), "mine")
    finally:
        session.close()


def test_settings_are_checked() -> None:
    with pytest.raises(UsageError, match="--token-env NOPE_NOT_SET"):
        RemoteSettings(token_env="NOPE_NOT_SET")
    with pytest.raises(UsageError, match="--connect-timeout"):
        RemoteSettings(connect_timeout=0)
    with pytest.raises(UsageError, match="--ca-bundle"):
        RemoteSettings(ca_bundle="/nonexistent/ca.pem")
