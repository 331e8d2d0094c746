"""The ``fsar`` command line: the Typer app (:mod:`.app`), the console and error boundary
(:mod:`.console`), shared options (:mod:`.options`) and one module per command family."""
