"""The `meshcast` command line. The one place that launches components, importing each lazily per subcommand."""
