"""``python -m govstack.compliance``: the compliance commands alone."""

from govstack.compliance.cli import standalone

standalone()
