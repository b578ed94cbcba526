"""The operator web page: alerts, assets, a communication map and sensor health.

Read-only over the local store, except one action: acknowledging an alert, which is
written to the ``operator_audit`` table with the operator's name. See docs/web.md.

Importing this package is cheap (no web framework): ``settings`` declares the
``[web]`` keys, which the schema (``mamori.sensor.schema``) holds; ``app`` and ``server`` pull in
Starlette, Jinja2 and uvicorn only when the page is actually served.
"""
