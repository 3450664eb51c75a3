"""Header parse of a real-size medium r16 dora-rows adapter (all 229 targets, fp16).

Measured side by side in one run: our strict header parser (`read_header`), the official
`safetensors` package listing the same header (`safe_open` + keys), and a full
`safetensors.numpy.load_file` of the same file. Prints medians and ratios.

    python benchmarks/header_parse.py [--repeat N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from safetensors import safe_open
from safetensors.numpy import load_file
from timing import median_seconds

from sa3ckpt.io.safetensors import read_header, write_safetensors
from sa3ckpt.synth import synth_adapter
from sa3ckpt.targets import FAMILIES


def _official_header(path: Path) -> int:
    with safe_open(str(path), framework="numpy") as f:
        return len(list(f.keys()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=51)
    args = parser.parse_args()
    adapter = synth_adapter(FAMILIES["medium"], "dora-rows", rank=16, alpha=16, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "medium-r16-dora-rows.safetensors"
        write_safetensors(path, adapter.file_tensors("sa3", "F16"), adapter.metadata())
        size_mb = path.stat().st_size / 1e6
        header = read_header(path)
        ours = median_seconds(lambda: read_header(path), args.repeat)
        official = median_seconds(lambda: _official_header(path), args.repeat)
        full = median_seconds(lambda: load_file(str(path)), max(5, args.repeat // 5))
    print(f"file: medium r16 dora-rows, {len(header.tensors)} tensors, {size_mb:.1f} MB")
    print(f"sa3ckpt read_header (strict, header only):     {ours * 1e3:8.3f} ms")
    print(f"safetensors safe_open + keys (header only):    {official * 1e3:8.3f} ms")
    print(f"safetensors.numpy.load_file (all tensor data): {full * 1e3:8.3f} ms")
    print(f"ratio load_file / read_header: {full / ours:.0f}x")
    print(f"ratio safe_open / read_header: {official / ours:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
