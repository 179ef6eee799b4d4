"""The bundled flowdigits model: a class-conditional flow-matching transformer (docs/design.md §5)."""
