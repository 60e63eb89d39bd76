"""The `rekindle` command line. Thin: parses, calls the library, prints, maps errors to exit
codes (docs/CLI.md). Must never hold logic the library lacks."""
