"""fundl's bundled examples (installed as ``fundl.examples``); see examples/README.md."""
