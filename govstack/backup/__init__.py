"""Backups, restore and the disaster-recovery drill.

- ``settings``: the ``govstack.backup`` section (``BackupSettings``)
- ``plan``: paths, image, secrets, rendered files of the backup service
- ``deploy``: pyinfra deploys (directories, files, the Postgres role)
- ``remote``/``ops``/``drill``: `govstack backup|restore|drill` over a testinfra host
- ``evidence``: the drill's report

The job itself runs in the backup container: the package jobs/backup (govstack_backup),
built into its image from there.
"""
