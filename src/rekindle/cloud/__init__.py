"""The cloud: the control plane (API, catalog database, scheduler, job queue, storage
assignment, the certificate authority and the token key)."""
