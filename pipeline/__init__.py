"""The whole CXRFuse flow as one command driven by a config: ``python -m pipeline run CONFIG``.

`pipeline.config` reads and validates the config (`load_pipeline`, `PipelineError`), `pipeline.plan`
turns it into a graph of steps (`plan`) and states what the leaderboard says (`findings`),
`pipeline.records` says which steps are done, stale or missing and why, `pipeline.execute` runs the
steps (`run`: locally, or as Ray tasks with `pipeline.ray_executor`), each command through
`pipeline.proc`.
"""
