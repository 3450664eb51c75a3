"""Codec adapters: LoRA-family adapters on a SAME encoder or decoder half.

Owns what a codec adapter is (its analysis against the codec target tables) and its conversion
between the dialects that can hold it. Merging one into codec weights is the merge package's.
"""

from sa3ckpt.ops.codec.adapter import (
    CodecAdapter,
    analyze_codec,
    mismatches,
)
from sa3ckpt.ops.codec.convert import (
    convert_codec,
)

__all__ = [
    "CodecAdapter",
    "analyze_codec",
    "convert_codec",
    "mismatches",
]
