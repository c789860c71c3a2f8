"""The facefuse REST service: a FastAPI app (app.py) over a job system (jobs, storage, queue, runner).

`facefuse serve` runs the app with an in-process worker and a SQLite job store; see docs/service-api.md.
"""
