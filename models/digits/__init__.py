"""The bundled digits model (DESIGN §5)."""
