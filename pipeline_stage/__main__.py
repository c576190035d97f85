"""`python -m pipeline_stage` is the `generate` command."""

from pipeline_stage.cli import main

main(prog_name="generate")
