"""``cifar-resnet config``: the effective settings, each with where its value came from."""

from __future__ import annotations

import typer

from ..common import Command, ConfigOpt, DebugOpt, JsonOpt, app, run, show, state


@app.command("config", cls=Command)
def config_cmd(ctx: typer.Context, config: ConfigOpt = None, debug: DebugOpt = False, json: JsonOpt = False) -> None:
    """Print the effective settings as TOML, with where each value came from.

    Every command resolves its settings the same way: flags > CIFAR_RESNET_<SECTION>__<FIELD>
    environment variables > --config FILE.toml (or ./cifar-resnet.toml) > defaults. The output can be
    saved and passed back with --config.

    Examples:

      cifar-resnet config > my.toml

      CIFAR_RESNET_TRAIN__LR=0.1 cifar-resnet config --config my.toml --json | jq '.settings[] | select(.key == "lr")'
    """
    from ...core.settings import describe_settings
    from .. import render

    result = run(ctx, {}, lambda _s: describe_settings(state(ctx).config))
    show(result, json, render.render_config)
