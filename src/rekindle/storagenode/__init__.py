"""The storage node: serves each organization's repository over HTTPS to agents holding a
storage token the cloud signed. It stores opaque, already encrypted objects and never sees
a key."""
