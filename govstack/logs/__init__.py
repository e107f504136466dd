"""Container logs kept for auditors: finding a request in the daily files
rsyslog writes under ``<stack_root>/logs`` (``govstack report logs``)."""
