"""One Finding class and one table of rules: id -> severity, title and fix hint.

Detection (adapters/detect.py) and validation (ops/validate.py) both report problems as
`Finding`s built from this table, so a rule's severity and hint are written once and every
report (inspect, validate, JUnit, GitHub annotations, the TUI) agrees on them. Severities
follow the minimums in DESIGN.md "Validation rules" (a rule may be stricter, never looser);
tests/test_findings.py checks that.
"""

from __future__ import annotations

from dataclasses import dataclass

from sa3ckpt.adapters.types import ADAPTER_TYPES

SEVERITIES = ("error", "warning", "info")  # most severe first: the order findings are listed


@dataclass(frozen=True)
class Rule:
    """A rule: stable id, severity, what it means, how to fix it.

    reported_as: a finer rule that detection raises but validate reports under a broader id
    (e.g. `mixed-types` is one way tensors are inconsistent with the type).
    """

    id: str
    severity: str
    title: str
    hint: str
    reported_as: str | None = None


RULES: dict[str, Rule] = {
    r.id: r
    for r in (
        Rule(
            "malformed",
            "error",
            "file is unreadable or not valid safetensors",
            "re-export the adapter; the file cannot be parsed",
        ),
        Rule(
            "not-found",
            "error",
            "the path does not exist (exit 3, like a file that cannot be read)",
            "check the path: there is no file or folder by that name",
        ),
        Rule(
            "pickle",
            "error",
            "legacy pickle checkpoint (.ckpt)",
            "convert to safetensors: sa3ckpt convert IN -o OUT --to sa3 --allow-pickle",
        ),
        Rule(
            "unsupported-format",
            "error",
            "format needs an optional extra",
            "install the extra it names (e.g. pip install 'sa3ckpt[gguf]')",
        ),
        Rule(
            "config-missing",
            "error",
            "no lora_config metadata",
            "save with lora_config JSON metadata: rank, alpha, adapter_type, include, exclude",
        ),
        Rule(
            "config-invalid",
            "error",
            "lora_config is not usable",
            "fix the lora_config JSON (rank positive integer, alpha number, adapter_type)",
        ),
        Rule(
            "unknown-type",
            "error",
            "unknown adapter type",
            "use one of: " + ", ".join(ADAPTER_TYPES),
        ),
        Rule(
            "legacy-alias",
            "warning",
            "legacy adapter type alias",
            "re-save with the explicit type: sa3ckpt convert IN -o OUT --to sa3",
        ),
        Rule(
            "ambiguous-orientation",
            "warning",
            "DoRA rows/cols cannot be told from shapes",
            "write the explicit type (dora-rows or dora-cols) in lora_config",
        ),
        Rule(
            "type-disagreement",
            "error",
            "lora_config type disagrees with the tensors",
            "fix lora_config.adapter_type to match the tensors (loaders trust the metadata)",
        ),
        Rule(
            "inconsistent-tensors",
            "error",
            "tensors inconsistent with the adapter type",
            "re-export the adapter; every target needs exactly its type's parameters",
        ),
        Rule(
            "mixed-types",
            "error",
            "targets disagree on the adapter type",
            "re-export the adapter; every target needs exactly its type's parameters",
            reported_as="inconsistent-tensors",
        ),
        Rule(
            "no-targets",
            "error",
            "no adapter target recognised",
            "the file has no keys any SA3 loader understands; check the dialect",
        ),
        Rule(
            "not-an-adapter",
            "error",
            "not an adapter (a base, DiT weights, conditioner or codec weights)",
            "validate adapter files; base and codec weights are inputs to `sa3ckpt merge`",
        ),
        Rule(
            "codec-config",
            "error",
            "codec adapter without a readable lora_config",
            "re-save the adapter with its lora_config (rank, alpha, adapter_type, target)",
        ),
        Rule(
            "codec-type",
            "error",
            "codec adapter tensors inconsistent with an adapter type",
            "every target needs the params of one type (lora: lora_A, lora_B; dora-rows: + "
            "magnitude); fix lora_config adapter_type or the file",
        ),
        Rule(
            "codec-rank",
            "error",
            "codec adapter rank disagrees with lora_config",
            "set lora_config rank to the tensors' rank",
        ),
        Rule(
            "codec-unknown-target",
            "error",
            "a target the SAME codec tables do not have",
            "codec targets are the attention/feed-forward Linears of each block and the "
            "latent projection (sa3ckpt inspect lists the family)",
        ),
        Rule(
            "codec-shape",
            "error",
            "codec adapter shapes do not fit the codec family (SAME-S and SAME-L share names)",
            "use the adapter with the codec it was trained on (--model names the family: "
            "same-s-decoder, same-l-decoder, ...)",
        ),
        Rule(
            "codec-encoder-fp32",
            "warning",
            "encoder adapter stored in fp16/bf16",
            "keep encoder adapters fp32 (convert --dtype fp32): an fp16 round trip moved the "
            "latent by 25-45% of the adapter's effect in the writer's measurements",
        ),
        Rule(
            "unmatched-key",
            "error",
            "key that is not an adapter tensor",
            "remove stray tensors or fix their names; loaders skip them silently",
        ),
        Rule(
            "unknown-target",
            "error",
            "target unknown to the model",
            "check --model; the target does not exist in this model family",
        ),
        Rule(
            "family-unknown",
            "error",
            "model family cannot be determined",
            "pass --model medium|small, or fix the shapes",
        ),
        Rule(
            "family-undetermined",
            "warning",
            "shapes could not be checked against a family",
            "pass --model medium|small (the family the adapter was trained for) to check them",
        ),
        Rule(
            "shape-mismatch",
            "error",
            "tensor shape does not fit the model",
            "the adapter was trained for another model; check --model and base_model",
        ),
        Rule(
            "rank-mismatch",
            "error",
            "tensor ranks disagree with lora_config.rank",
            "fix lora_config.rank, or re-export consistently ranked tensors",
        ),
        Rule(
            "rank-exceeds-target",
            "error",
            "rank larger than min(fan_in, fan_out) of its target",
            "the extra directions cannot exist in the layer: re-export with a rank it can hold",
        ),
        Rule(
            "bare-keys",
            "warning",
            "keys without the `model.` root",
            "the official loader loads nothing from these: sa3ckpt convert IN -o OUT --to sa3",
        ),
        Rule(
            "foreign-dialect",
            "warning",
            "not the sa3 key dialect",
            "the official loader expects sa3 keys: sa3ckpt convert IN -o OUT --to sa3",
        ),
        Rule(
            "nonzero-slot",
            "warning",
            "parametrization slot is not 0",
            "re-save with slot 0: sa3ckpt convert IN -o OUT --to sa3",
        ),
        Rule(
            "nan-inf",
            "error",
            "NaN or Inf in tensors",
            "the training diverged; use an earlier step",
        ),
        Rule(
            "negative-magnitude",
            "warning",
            "negative DoRA/BoRA magnitudes",
            "magnitudes are norms and should be positive; check the trainer",
        ),
        Rule(
            "coverage-missing",
            "warning",
            "targets selected by include/exclude are absent",
            "re-export all targets, or make include/exclude match what was trained",
        ),
        Rule(
            "coverage-unselected",
            "warning",
            "targets present but not selected by include/exclude",
            "the official loader re-applies include/exclude and ignores these tensors",
        ),
        Rule(
            "lineage-mismatch",
            "warning",
            "an adapter trained on a training base (…-base) goes into the post-trained model, "
            "or the reverse (sa3ckpt.lineage)",
            "merge into the model its base_model names, or accept that its deltas meet other "
            "weights (sa3.cpp applies base-trained adapters to the post-trained model so)",
        ),
        Rule(
            "base-model-mismatch",
            "warning",
            "base_model disagrees with the detected family",
            "fix lora_config.base_model, or check you picked the right adapter",
        ),
        Rule(
            "header-only",
            "info",
            "read by URL: checks that read tensor data were not run",
            "download the file and validate it to check magnitudes and zero effect",
        ),
        Rule(
            "zero-effect",
            "warning",
            "adapter has no effect (all lora_B / M_xs zero)",
            "this is a fresh, untrained initialisation; export a trained step",
        ),
        Rule(
            "dtype-unconventional",
            "warning",
            "tensors not in fp16",
            "SA3 adapters are saved fp16 (baked_vnorm_row fp32): sa3ckpt convert --dtype fp16",
        ),
        Rule(
            "no-runtime-module",
            "info",
            "target has no module in the MLX runtime",
            "fine: merges write it into cond.seconds_total_weight; live MLX injection skips it",
        ),
        Rule(
            "xs-no-bases",
            "info",
            "XS adapter without stored U/V bases",
            "merging needs the base weights (or a bases file) to rebuild U/V",
        ),
        Rule(
            "gguf-kv-type",
            "error",
            "GGUF KV field of a type sa3.cpp rejects",
            "sa3.cpp aborts on it: re-export with sa3ckpt convert IN -o OUT.gguf --to sa3cpp",
        ),
        Rule(
            "gguf-xs-no-bases",
            "error",
            "sa3.cpp GGUF XS adapter without U/V",
            "sa3.cpp cannot run it: convert with the base, sa3ckpt convert IN -o OUT.gguf "
            "--to sa3cpp --base BASE",
        ),
        Rule(
            "gguf-architecture",
            "warning",
            "general.architecture is not sa3-lora",
            "sa3.cpp's tools write general.architecture = sa3-lora; check this is an adapter",
        ),
        Rule(
            "gguf-name",
            "warning",
            "general.name is not sa3.cpp's",
            "sa3.cpp's tools write general.name = 'sa3 <type> adapter' (its contract lists it)",
        ),
        Rule(
            "gguf-type-default",
            "info",
            "no lora.adapter_type: read as lora",
            "fine for a lora adapter; write lora.adapter_type for any other type",
        ),
        Rule(
            "gguf-f16",
            "info",
            "GGUF tensors stored as F16",
            "sa3.cpp's inference loader reads F16; its own tools write F32",
        ),
        Rule(
            "pickle-note",
            "info",
            "read through the pickle opt-in",
            "prefer safetensors for distribution",
        ),
    )
}


@dataclass(frozen=True)
class Finding:
    """One problem found in a file: the rule it breaks, its severity, what and how to fix."""

    rule: str
    severity: str
    message: str
    hint: str

    @classmethod
    def of(cls, rule: str, message: str) -> Finding:
        """A finding of `rule` with the table's severity and hint (KeyError for unknown ids)."""
        row = RULES[rule]
        return cls(rule, row.severity, message, row.hint)

    def reported(self) -> Finding:
        """The same finding under the id validate reports it as (itself for most rules)."""
        broader = RULES[self.rule].reported_as
        return self if broader is None else Finding.of(broader, self.message)

    def to_json(self) -> dict[str, str]:
        return {
            "rule": self.rule,
            "severity": self.severity,
            "message": self.message,
            "hint": self.hint,
        }


def severity_order(finding: Finding) -> int:
    """Sort key: errors first, then warnings, then infos."""
    return SEVERITIES.index(finding.severity)
