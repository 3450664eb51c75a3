"""inspect / validate / hash / the audit table by URL, against a real nginx and a broken server.

What is asserted: the reports equal the local files' (only the path differs); the requests
and bytes nginx logged (at most two ranges for a safetensors header, one for a small one,
a server ignoring ranges cut off); where a token went (never to another origin, never in
any output); the one line and exit code of every failure; the data routes' refusal.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from sa3ckpt.cli import main
from sa3ckpt.io import remote
from sa3ckpt.io.remote import RemoteSettings
from sa3ckpt.io.remote.settings import FIRST_BYTES
from tests.conftest import SMALL
from tests.remote_servers import TOKEN, FaultServer, Nginx, Unanswered

FAST = ["--retry-backoff", "0.001"]


@pytest.fixture(autouse=True)
def fresh_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """No token in the environment unless a test sets one; a fresh session each test."""
    for name in ("HF_TOKEN", "HF_ENDPOINT", "REMOTE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    remote.configure(RemoteSettings())


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def inspect_json(capsys: pytest.CaptureFixture[str], path: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = run(capsys, "inspect", path, "--json")
    entry = json.loads(out)["files"][0]
    entry.pop("path")
    return code, entry


# --- reports equal the local files' ---------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["lora.safetensors", "dora-rows.safetensors", "peft-lora", "lora.gguf", "diffusers/"],
)
def test_inspect_by_url_equals_inspect_of_the_file(
    nginx: Nginx, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    local = nginx.root / "files" / name.rstrip("/")
    code_local, want = inspect_json(capsys, str(local))
    code, got = inspect_json(capsys, nginx.url(f"files/{name}"))
    assert code == code_local == 0
    assert got == want
    assert got["format"] in ("safetensors", "peft", "gguf", "diffusers-lora")


def test_small_header_is_one_range_request(
    nginx: Nginx, capsys: pytest.CaptureFixture[str]
) -> None:
    mark = nginx.mark()
    code, _out, err = run(capsys, "inspect", nginx.url("files/large.safetensors"))
    assert code == 0, err
    lines = nginx.since(mark)
    assert [(r.uri, r.status) for r in lines] == [("/files/large.safetensors", 206)]
    assert lines[0].bytes <= FIRST_BYTES  # of a 32 MB file


def test_large_header_is_two_range_requests(
    nginx: Nginx, capsys: pytest.CaptureFixture[str]
) -> None:
    path = nginx.root / "files" / "big-header.safetensors"
    header_end = 8 + int.from_bytes(path.read_bytes()[:8], "little")
    assert header_end > FIRST_BYTES
    mark = nginx.mark()
    code, _, err = run(capsys, "inspect", nginx.url("files/big-header.safetensors"), "--json")
    assert code == 0, err
    lines = nginx.since(mark, at_least=2)
    assert [r.status for r in lines] == [206, 206]
    assert sum(r.bytes for r in lines) == header_end  # exactly the prefix and the header


def test_server_ignoring_ranges_is_cut_off(
    nginx: Nginx, capsys: pytest.CaptureFixture[str]
) -> None:
    size = (nginx.root / "files" / "large.safetensors").stat().st_size
    _, want = inspect_json(capsys, str(nginx.root / "files" / "large.safetensors"))
    mark = nginx.mark()
    code, got = inspect_json(capsys, nginx.url("norange/large.safetensors"))
    assert code == 0 and got == want
    lines = nginx.since(mark)
    assert [r.status for r in lines] == [200]
    assert lines[0].bytes < size // 2  # the connection was dropped once the header was read


def test_hub_paths_with_revisions(
    nginx: Nginx, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", nginx.base)
    code, out, err = run(
        capsys,
        "inspect",
        "hf://org/repo/lora.safetensors",
        "hf://org/repo@v1/dora-rows.safetensors",
        "hf://org/repo/peft-lora",
        "hf://org/repo/lora.gguf",
        "--json",
    )
    assert code == 0, err
    files = json.loads(out)["files"]
    assert [f["path"] for f in files][:2] == [
        "hf://org/repo/lora.safetensors",
        "hf://org/repo@v1/dora-rows.safetensors",
    ]
    assert [f["adapter_type"]["resolved"] for f in files] == ["lora", "dora-rows", "lora", "lora"]
    code, _, err = run(capsys, "inspect", "hf://org/repo@v2/lora.safetensors")
    assert code == 3 and "not found (HTTP 404" in err


def test_validate_by_url_all_outputs(
    nginx: Nginx, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = nginx.url("files/dora-rows.safetensors")
    junit = tmp_path / "report.xml"
    code, out, err = run(capsys, "validate", url, "--json", "--junit", str(junit), "--github")
    local_code, local_out, _ = run(
        capsys, "validate", str(SMALL / "dora-rows.safetensors"), "--json"
    )
    assert code == local_code
    doc, local = json.loads(out), json.loads(local_out)
    rules = {f["rule"] for f in doc["files"][0]["findings"]}
    local_rules = {f["rule"] for f in local["files"][0]["findings"]}
    # the checks that read tensor data are said to be skipped, the rest agree
    assert rules == (local_rules - {"zero-effect", "negative-magnitude"}) | {"header-only"}
    assert doc["files"][0]["path"] == url
    assert url in junit.read_text()
    # GitHub annotations (to stderr with --json), the file property escaped as GitHub wants
    assert f"::notice file={url.replace(':', '%3A')}," in err
    code, out, _ = run(capsys, "validate", nginx.url("files/missing.safetensors"), "--json")
    assert code == 3 and json.loads(out)["files"][0]["status"] == "malformed"


def test_hash_streams_the_body_once(nginx: Nginx, capsys: pytest.CaptureFixture[str]) -> None:
    names = ["lora.safetensors", "peft-lora", "lora.gguf"]
    code, out, _ = run(capsys, "hash", *[str(nginx.root / "files" / n) for n in names], "--json")
    assert code == 0
    want = [(f["tensor_sha256"], f["file_sha256"]) for f in json.loads(out)["files"]]
    mark = nginx.mark()
    code, out, err = run(capsys, "hash", *[nginx.url(f"files/{n}") for n in names], "--json")
    assert code == 0, err
    assert [(f["tensor_sha256"], f["file_sha256"]) for f in json.loads(out)["files"]] == want
    whole = [r for r in nginx.since(mark, at_least=7) if r.status == 200]
    assert len(whole) == 3  # one full GET per weights file, beside the header ranges


# --- the audit table ------------------------------------------------------------------------


def test_audit_table_from_a_list(
    nginx: Nginx, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    listing = tmp_path / "urls.txt"
    good = [nginx.url(f"files/{n}") for n in ("lora.safetensors", "peft-lora", "lora.gguf")]
    bad = [nginx.url("files/gone.safetensors"), "ftp://127.0.0.1/x.safetensors"]
    listing.write_text(
        "# adapters to check\n" + "\n".join([*good, "", *bad, str(SMALL / "bora.safetensors")])
    )
    code, out, err = run(
        capsys, "inspect", "--table", "--from-list", str(listing), "--jobs", "3", "--json"
    )
    assert code == 3
    rows = {row["path"]: row for row in json.loads(out)["rows"]}
    assert len(rows) == 6
    assert [rows[u]["status"] for u in good] == ["ok", "ok", "ok"]
    assert rows[str(SMALL / "bora.safetensors")]["status"] == "ok"
    assert rows[bad[0]]["status"] == "malformed" and "HTTP 404" in rows[bad[0]]["error"]
    assert "unsupported URL scheme 'ftp'" in rows[bad[1]]["error"]
    assert len(err.strip().splitlines()) == 2  # one line per bad row


def test_unsupported_scheme_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("inspect", "validate", "hash"):
        code, _, err = run(capsys, command, "ftp://host/x.safetensors")
        assert code == 2
        assert err.strip() == (
            "sa3ckpt: error: ftp://host/x.safetensors: unsupported URL scheme 'ftp' "
            "(http://, https:// and hf:// are read)"
        )


def test_credentials_in_a_url_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "inspect", "https://me:hunter2@hub.invalid/a.safetensors")
    assert code == 2 and "hunter2" not in out + err
    assert "https://hub.invalid/a.safetensors: credentials in a URL are not accepted" in err


# --- routes that need tensor data -----------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["inspect", "{url}", "--stats"],
        ["inspect", "--table", "{url}", "--deep"],
        ["validate", "{url}", "--deep"],
        ["convert", "{url}", "-o", "{out}", "--to", "peft"],
        ["merge", "{base}", "{url}:0.5", "-o", "{out}"],
        ["resize", "{url}", "-o", "{out}", "--rank", "2"],
        ["combine", "{url}", "{url}", "-o", "{out}", "--method", "cat"],
    ],
)
def test_data_routes_refuse_urls(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str]
) -> None:
    url = "https://hub.invalid/a.safetensors"  # never fetched: refused before any request
    filled = [
        a.format(url=url, out=tmp_path / "out", base=SMALL.parents[1] / "bases" / "x") for a in args
    ]
    code, _out, err = run(capsys, *filled)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "needs the tensor data" in err and "download the file first" in err
    assert not (tmp_path / "out").exists()


# --- credentials ------------------------------------------------------------------------------


def test_token_goes_to_its_host_only(
    nginx: Nginx, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    private = nginx.url("private/lora.safetensors")
    code, out, err = run(capsys, "inspect", private)
    assert code == 3 and "access denied (HTTP 401" in err and "--token-env" in err

    monkeypatch.setenv("REMOTE_TOKEN", TOKEN)
    mark = nginx.mark()
    code, out, err = run(
        capsys,
        "inspect",
        private,
        nginx.url("private-other/lora.safetensors"),  # 302 to localhost:<port2>
        "--token-env",
        "REMOTE_TOKEN",
        "--json",
    )
    assert code == 0, err
    lines = nginx.since(mark, at_least=3)
    assert all(r.auth for r in lines if r.port == nginx.port)
    assert [r.auth for r in lines if r.port == nginx.port2] == [False]
    assert TOKEN not in out + err


def test_hf_token_is_dropped_at_the_cdn(
    nginx: Nginx, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", nginx.base)
    code, _, err = run(capsys, "inspect", "hf://org/cdn/lora.safetensors")
    assert code == 3 and "HTTP 401" in err
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    mark = nginx.mark()
    code, out, err = run(capsys, "validate", "hf://org/cdn/lora.safetensors", "--json")
    assert code == 0, err
    lines = nginx.since(mark, at_least=2)
    assert [(r.port, r.status, r.auth) for r in lines] == [
        (nginx.port, 302, True),
        (nginx.port2, 206, False),
    ]
    # HF_TOKEN is for the hub: another host named directly gets nothing
    mark = nginx.mark()
    other = f"http://localhost:{nginx.port2}/files/lora.safetensors"
    assert run(capsys, "inspect", other)[0] == 0
    assert [r.auth for r in nginx.since(mark)] == [False]
    assert TOKEN not in out + err


def test_tls_is_always_verified(nginx: Nginx, capsys: pytest.CaptureFixture[str]) -> None:
    if nginx.cert is None:
        pytest.skip("openssl is not installed: no certificate for the TLS server")
    url = f"https://127.0.0.1:{nginx.port3}/files/lora.safetensors"
    code, _, err = run(capsys, "inspect", url, "--retries", "0")
    assert code == 3
    assert err.strip() == (
        f"sa3ckpt: error: {url}: TLS certificate verification failed "
        "(a private hub's roots: --ca-bundle FILE)"
    )
    code, out, err = run(capsys, "inspect", url, "--ca-bundle", str(nginx.cert), "--json")
    assert code == 0, err
    assert json.loads(out)["files"][0]["adapter_type"]["resolved"] == "lora"


def test_redirects_same_host(nginx: Nginx, capsys: pytest.CaptureFixture[str]) -> None:
    code, got = inspect_json(capsys, nginx.url("same/lora.safetensors"))
    _, want = inspect_json(capsys, str(SMALL / "lora.safetensors"))
    assert code == 0 and got == want


# --- a misbehaving server -----------------------------------------------------------------------


def _fault(capsys: pytest.CaptureFixture[str], url: str, *extra: str) -> tuple[int, str]:
    code, _out, err = run(capsys, "inspect", url, *FAST, *extra)
    return code, err.strip()


@pytest.mark.parametrize(
    ("path", "cause"),
    [
        ("wrong-range.safetensors", "sent bytes 5-14/"),
        ("truncated.safetensors", "(truncated) (after 4 attempts)"),
        ("always-503.safetensors", "HTTP 503 Service Unavailable (after 4 attempts)"),
        ("loop.safetensors", "too many redirects (more than 10)"),
        ("to-ftp.safetensors", "redirected to a URL that is not http(s)"),
        ("no-length.safetensors", "sends no Content-Length"),
        ("gzip.safetensors", "an encoded body (Content-Encoding: gzip)"),
        ("status/403.safetensors", "access denied (HTTP 403"),
        ("status/500.safetensors", "HTTP 500 Internal Server Error"),
        ("status/416.safetensors", "HTTP 416"),
    ],
)
def test_faults_are_one_line_and_exit_3(
    fault_server: FaultServer, capsys: pytest.CaptureFixture[str], path: str, cause: str
) -> None:
    url = fault_server.url(path)
    code, err = _fault(capsys, url)
    assert code == 3
    assert err.startswith(f"sa3ckpt: error: {url}: ") and "\n" not in err
    assert cause in err


def test_retries_are_bounded(fault_server: FaultServer, capsys: pytest.CaptureFixture[str]) -> None:
    fault_server.hits.clear()
    assert _fault(capsys, fault_server.url("always-503.safetensors"), "--retries", "2")[0] == 3
    assert fault_server.hits["/always-503.safetensors"] == 3
    assert _fault(capsys, fault_server.url("status/500.safetensors"))[0] == 3
    assert fault_server.hits["/status/500.safetensors"] == 1  # not transient: not retried
    assert _fault(capsys, fault_server.url("loop.safetensors"), "--max-redirects", "3")[0] == 3
    assert fault_server.hits["/loop.safetensors"] == 4


def test_transient_failures_are_retried(
    fault_server: FaultServer, capsys: pytest.CaptureFixture[str]
) -> None:
    flaky = f"flaky/{uuid.uuid4().hex}.safetensors"  # 503 twice, then served
    code, err = _fault(capsys, fault_server.url(flaky), "--retries", "1")
    assert code == 3 and "HTTP 503" in err
    code, err = _fault(capsys, fault_server.url(flaky), "--retries", "2")
    assert code == 0, err


def test_a_longer_body_than_announced_is_read_as_announced(
    fault_server: FaultServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _fault(capsys, fault_server.url("bigger-body.safetensors"))
    assert code == 0, err


def test_read_timeout(fault_server: FaultServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _fault(
        capsys, fault_server.url("hang.safetensors"), "--read-timeout", "0.2", "--retries", "0"
    )
    assert code == 3 and "timed out waiting for data (after 0.2 s)" in err


def test_connect_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    server = Unanswered()
    try:
        code, err = _fault(
            capsys, server.url("x.safetensors"), "--connect-timeout", "0.2", "--retries", "0"
        )
    finally:
        server.close()
    assert code == 3 and "timed out connecting (after 0.2 s)" in err


def test_refused_connection(capsys: pytest.CaptureFixture[str]) -> None:
    server = Unanswered()
    url = server.url("x.safetensors")
    server.close()  # nothing listens there now
    code, err = _fault(capsys, url, "--retries", "1")
    assert code == 3 and "cannot connect" in err and "(after 2 attempts)" in err


def test_token_never_printed_on_failure(
    fault_server: FaultServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REMOTE_TOKEN", TOKEN)
    url = fault_server.url("status/401.safetensors")
    code, out, err = run(capsys, "inspect", url, "--token-env", "REMOTE_TOKEN", "--json", *FAST)
    assert code == 3 and "the token was refused" in err
    assert TOKEN not in out + err
    assert fault_server.auth_seen["/status/401.safetensors"][-1] == f"Bearer {TOKEN}"
