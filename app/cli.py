"""``mmedagent``: the command line. Bad input exits 2 with a one-line reason and writes nothing.

The commands live in :mod:`app.commands`, one module per group; this module wires them together.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from app.commands import ask, db, demo, evaluate, export, feedback, runs, train, web_ui
from app.commands.common import policy_choices

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Multi-agent medical VQA that learns from use."
)

_POLICY_HELP = 'serve this registered policy version for the role: "latest" or its id'


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
    triage: Annotated[str | None, typer.Option(help=_POLICY_HELP)] = None,
    specialist: Annotated[str | None, typer.Option(help=_POLICY_HELP)] = None,
    attending: Annotated[str | None, typer.Option(help=_POLICY_HELP)] = None,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    chosen = {"triage": triage, "specialist": specialist, "attending": attending}
    policy_choices.clear()
    policy_choices.update({role: {"policy": p} for role, p in chosen.items() if p is not None})


app.command("tiny-model")(ask.tiny_model)
app.command()(ask.ask)
app.command()(demo.demo)
app.add_typer(runs.runs_app, name="runs")
app.add_typer(db.db_app, name="db")
app.command("ui")(web_ui.ui_command)
app.command()(feedback.feedback)
app.command("export")(export.export_command)
app.add_typer(evaluate.eval_app, name="eval")
app.add_typer(train.policies_app, name="policies")
app.command(context_settings=train.TRAIN_CONTEXT)(train.train)


def main() -> None:
    app(prog_name="mmedagent")


if __name__ == "__main__":
    sys.exit(main())
