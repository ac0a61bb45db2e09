"""The report side: from run records to results. `collect` gathers a folder's records into configurations
(`results`), judges them (`stats`, the ladder's `scaling`, the pilot's `power`) and writes the tables and plots
(`plots`); `site` writes them as pages. It reads records (`sharebench.schema`) and never imports what trains:
a record collected on another machine, or by a later version, reads the same (tests/test_collect.py holds it)."""
