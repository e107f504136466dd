"""Privacy-preserving usage analytics (issue 16).

Two halves that share only the database schema ``analytics`` (migration 0006):

- the API writes pseudonymous usage **events** (``events``): one per upload, search, document
  view, download, delete and failed request, best effort, from a bounded in-process queue that a
  background thread drains in batches;
- the **analytics service** (``govstack-app analytics``, its own container and Postgres role)
  answers aggregate questions about them only as differentially private releases made with
  OpenDP (``mechanisms``), charged to a per-consumer and a total privacy budget recorded in an
  append-only ledger, cached per query and budget period (``ledger``), with small groups
  suppressed (``releases``).

``runbooks/privacy-analytics.md`` states what is collected and released, for auditors.
"""
