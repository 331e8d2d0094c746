"""One module per subcommand family; each defines ``register(app)`` and an ``ORDER`` for --help."""
