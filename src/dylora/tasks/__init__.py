"""Tasks: one module per kind (glue, nlg_task with nlg's data, synthetic), what a kind is
(``base``), and the registry of kinds (``registry``)."""
