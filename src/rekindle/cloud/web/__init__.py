"""The management console: server-rendered pages (Jinja2, htmx) on the cloud's app, under
/ui. Every action calls the same `CloudServices` as the API; the pages hold no logic of
their own."""
