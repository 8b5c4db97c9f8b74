"""The controller: one leader serving clients and workers over gRPC, standbys redirecting.

Which file a change goes in (docs/architecture.md has the flows and the invariants):

- a new RPC or a request check: ``service`` (ProcessController), ``launch_service``
  (launches), ``registry_service`` (WorkerRegistry); then the ``Controller`` method it calls;
- the ``Controller`` (``controller``) only composes the parts and hands each call to one:
  - ``launch`` (launch checks, idempotency) and ``run_queue`` (runs waiting for a worker);
  - ``runs`` (starting a run on a worker), ``stops`` (stopping), ``ends`` (ending, however);
  - ``reports`` (progress, log lines and ends from workers);
  - ``catalog`` (define, purge, dismiss);
  - ``fleet`` (registration, heartbeats, reconciliation, the sweep);
  - ``takeover`` (taking over a term, stepping down), ``leadership`` (the lease loop);
  - ``watching`` (serving a watch), ``reads`` (reads of runs, scopes, workers);
- shared by the parts: ``state`` (records in memory; stage, commit, publish), ``active_runs``
  (what is known of each active run), ``transitions`` (state changes, pure), ``commit`` (the
  single writer), ``watch`` (the fan-out hub), ``dispatch`` (the stream to each worker),
  ``workers`` (the roster);
- who may do what: ``auth``; where it is stored: ``store`` (its contract in ``store.base``).

A part calls only parts below it on a launch's path (launch -> commit -> dispatch ->
worker -> end -> watchers); one that must tell a part above gets a callback.
"""
