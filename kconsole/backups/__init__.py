"""Backups: manifests, the stores that hold them (local, SFTP, S3), create, restore,
verify, prune, and the catalog across every location."""
