"""Generate examples/cifar-resnet.toml, every setting with its default, from the settings model
(``--check`` compares instead of writing), so the example cannot drift from the settings."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "examples" / "cifar-resnet.toml"
HEADER = """\
# cifar-resnet settings: every setting, with its default value.
# Generated from cifar_resnet_cli/core/settings.py by scripts/example_config.py (make docs).
#
# Copy this file to ./cifar-resnet.toml (read automatically) or pass it with --config FILE.
# Precedence, highest first: command-line flags > environment variables
# CIFAR_RESNET_<SECTION>__<FIELD> (e.g. CIFAR_RESNET_MODEL__STEM=cifar) > this file > defaults.
# Unknown keys are errors, so a misspelt setting never goes unnoticed.
"""


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path):
        return json.dumps(str(value))
    return json.dumps(value)


def _entry(loc: tuple[str, ...]) -> list[str]:
    from cifar_resnet_cli.core.settings import option_names, setting_field

    field = setting_field(loc)
    flag, env, _ = option_names(loc)
    lines = ["# " + line for line in textwrap.wrap(field.description or "", 100)]
    lines.append(f"# flag: {flag}    env: {env}")
    default = field.get_default(call_default_factory=True)
    lines.append(f"# {loc[-1]} =" if default is None else f"{loc[-1]} = {_value(default)}")
    return lines


def example() -> str:
    from cifar_resnet_cli.core.settings import Settings

    top, sections = [], []
    for name, field in Settings.model_fields.items():
        model = field.annotation
        if isinstance(model, type) and hasattr(model, "model_fields"):
            body = [f"[{name}]", f"# {model.__doc__.strip()}"]
            for key in model.model_fields:
                body += ["", *_entry((name, key))]
            sections.append("\n".join(body))
        else:
            top.append("\n".join(_entry((name,))))
    return "\n\n".join([HEADER.rstrip("\n"), *top, *sections]) + "\n"


def main() -> int:
    text = example()
    if "--check" in sys.argv[1:]:
        if TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET} is stale: run make docs", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
