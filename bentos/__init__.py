"""Bento services: thin wiring of gateway pieces."""
