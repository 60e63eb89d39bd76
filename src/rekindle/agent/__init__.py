"""The agent: enrolls a server with the cloud, then long-polls for jobs and runs backups and
restores with the repository engine against the storage node the cloud assigns."""
