"""The job steps, one module each; `python -m edgetune_jobs.steps.<module>` runs one
(edgetune_contract.names.STEPS maps step names to modules)."""
