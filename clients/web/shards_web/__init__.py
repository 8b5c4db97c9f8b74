"""The web GUI: ``shards web``, a browser front end for the ProcessController API.

The GUI server is one more client of the controller (through ``shards.AsyncClient``):
it keeps one upstream watch per scope, however many browsers watch that scope,
and serves the browsers Server-Sent Events and a small JSON API. The page is
Preact + htm, vendored as ES modules in ``static/vendor`` (no build step, no CDN).
"""
