"""Serving runtime: load a registered pipeline and answer business objects over HTTP."""
