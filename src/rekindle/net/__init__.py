"""What the cloud, the storage node and the agent share on the wire: the cloud's certificate
authority, signed storage tokens, the agent protocol's messages, and an HTTPS server that
tells the application which client certificate a request came with.

Nothing here knows the repository format or the database."""
