"""The bundled digits model (docs/design.md §5)."""
