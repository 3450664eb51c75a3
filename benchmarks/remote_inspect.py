"""Header-only inspect by URL: requests, bytes and wall time against a local nginx.

Measured side by side in one run (nginx started here, as the tests start it; its access log
counts the requests and bytes it sent):
1. a real-size medium adapter (rank-16 dora-rows on all 229 targets, 43 MB fp16, a 100 KB
   header): `inspect URL` (goal: at most 2 requests and 256 KiB) vs inspect of the same file
   on disk (the floor) vs downloading it whole first (what a user does without URLs);
2. the audit table of 1,000 remote adapters (benchmarks/audit_table.py's sweep) listed by URL,
   `audit_paths(urls, jobs=16)` (goal: at most 10 s on 2 cores) vs the same files on disk.

The machine may be shared: numbers are medians, the floors are measured in the same run.

    python benchmarks/remote_inspect.py [--files 1000] [--jobs 16]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from audit_table import generate
from timing import median_seconds

from sa3ckpt.io import remote
from sa3ckpt.io.remote import RemoteSettings
from sa3ckpt.io.safetensors import write_safetensors
from sa3ckpt.ops.inspect import AuditTable, audit_paths, inspect_file
from sa3ckpt.synth import synth_adapter
from sa3ckpt.targets import FAMILIES
from tests.remote_servers import NGINX, Nginx


def fresh() -> None:
    """A new session: no connection or cached header survives from the previous run."""
    remote.configure(RemoteSettings())


def download(url: str) -> int:
    import httpx

    with httpx.Client() as client:
        return len(client.get(url).content)


def medium(nginx: Nginx) -> None:
    files = nginx.root / "files"
    adapter = synth_adapter(FAMILIES["medium"], "dora-rows", rank=16, alpha=16, seed=0)
    path = files / "medium-r16-dora-rows.safetensors"
    write_safetensors(path, adapter.file_tensors(), adapter.metadata())
    url = nginx.url("files/medium-r16-dora-rows.safetensors")
    header = 8 + int.from_bytes(path.read_bytes()[:8], "little")

    fresh()
    mark = nginx.mark()
    report = inspect_file(url)
    lines = nginx.since(mark)
    sent = sum(r.bytes for r in lines)
    assert report.size_bytes == path.stat().st_size

    def remote_once() -> None:
        fresh()
        inspect_file(url)

    remote_s = median_seconds(remote_once, 11)
    local_s = median_seconds(lambda: inspect_file(path), 11)
    download_s = median_seconds(lambda: download(url), 5)
    size = path.stat().st_size
    print(
        f"[inspect URL] medium r16 dora-rows, {size / 1e6:.1f} MB, header {header / 1024:.0f} KiB"
    )
    print(f"  requests {len(lines)} (goal <= 2), bytes sent {sent / 1024:.0f} KiB (goal <= 256)")
    print(f"  inspect URL (fresh session each run): {remote_s * 1e3:8.1f} ms")
    print(f"  inspect of the file on disk (floor):  {local_s * 1e3:8.1f} ms")
    print(f"  download the whole file (httpx GET):  {download_s * 1e3:8.1f} ms")
    print(
        f"  ratios: URL / disk {remote_s / local_s:.2f}x, download / URL "
        f"{download_s / remote_s:.1f}x, bytes file / fetched {size / max(sent, 1):.0f}x"
    )


def table(nginx: Nginx, files: int, jobs: int) -> None:
    root = nginx.root / "files" / "runs"
    root.mkdir()
    generate(root, files)
    paths = sorted(str(p) for p in root.rglob("*.safetensors"))
    urls = [nginx.url("files/" + str(Path(p).relative_to(nginx.root / "files"))) for p in paths]

    def remote_table() -> AuditTable:
        fresh()
        return audit_paths(urls, jobs=jobs)

    mark = nginx.mark()
    remote_s = median_seconds(remote_table, 3)
    requests = len(nginx.since(mark, at_least=3 * len(urls))) / 3
    local_s = median_seconds(lambda: audit_paths(paths), 3)
    fresh()
    start = time.perf_counter()
    rows = audit_paths(urls, jobs=jobs)
    once = time.perf_counter() - start
    malformed = rows.malformed
    print(f"[audit table] {len(urls)} remote adapters (tiny-small sweep), --jobs {jobs}")
    print(f"  audit_paths(urls): {remote_s:6.2f} s median (goal <= 10 s), {requests:.0f} requests")
    print(f"  audit_paths(files on disk, floor): {local_s:6.2f} s; ratio {remote_s / local_s:.2f}x")
    print(f"  one more run: {once:.2f} s, malformed rows {malformed}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=16)
    args = parser.parse_args()
    if NGINX is None:
        print("nginx is not installed (apt-get install nginx-light)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        served = Path(tmp) / "served"
        (served / "files").mkdir(parents=True)
        nginx = Nginx(served, Path(tmp) / "nginx")
        try:
            medium(nginx)
            table(nginx, args.files, args.jobs)
        finally:
            nginx.stop()
            shutil.rmtree(served, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
