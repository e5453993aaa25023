"""The command-line layer: parse, call the core, render. Never imports torch at module level."""
