"""The whole CXRFuse flow as one command driven by a config: ``python -m pipeline run CONFIG``.

`pipeline.config` reads and validates the config (`load_pipeline`, `PipelineError`), `pipeline.plan`
turns it into steps (`plan`) and states what the leaderboard says (`findings`), `pipeline.execute`
runs the steps (`run`).
"""
